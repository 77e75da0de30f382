import json

import numpy as np
import pandas as pd
import pytest
from conftest import example_molecules
from rdkit import Chem
from typer.testing import CliRunner

from molgen.baselines.knn import TanimotoKNN
from molgen.cli import app
from molgen.mutants import single_edit_mutants
from molgen.stats import (
    auroc,
    calibration,
    spearman,
    spearman_against_exact,
    spearman_against_exact_interval,
)
from molgen.evaluation.generation import (
    canonicalize,
    fcd,
    internal_diversity,
    kl_benchmark,
    novelty,
    uniqueness,
    validity,
)
from molgen.evaluation.nspdk import nspdk_features, nspdk_kernel, nspdk_mmd
from molgen.evaluation.report import ReferenceData, floor_reference, mean_over_draws

SMALL = ["CCO", "CC(=O)O", "c1ccccc1", "CCN", "C1CCCCC1", "CC#N", "OC1CCOC1", "CC(C)O", "NC(=O)N", "C1=CC=CN1",
         "CCOC", "CC(=O)C", "OCC(O)CO", "C1CC1", "CN(C)C", "O=CC=O", "CC=CC", "N#CC#N", "FC(F)F", "CCCCO"]
ALKANES = ["C" * k for k in range(1, 10)]


def mols(smiles):
    return [Chem.MolFromSmiles(s) for s in smiles]


def test_validity_uniqueness_and_novelty_have_exact_values_on_a_duplicate_laden_list():
    samples = ["CCO", "OCC", "C(O)C", "C", "C1CC", None, "CC"]
    canonical = canonicalize(samples)
    assert validity(samples) == pytest.approx(5 / 7)
    assert uniqueness(canonical) == pytest.approx(3 / 5)  # CCO three times, C, CC
    assert novelty(canonical, {"CCO"}) == pytest.approx(2 / 3)


def test_floor_draws_training_molecules_with_replacement_as_a_perfect_generator_would():
    train = canonicalize(SMALL)
    data = ReferenceData(train=train, val=[], test=train, density_test=[], mutants=[], mutant_edits={}, druglike=[],
                         druglike_source=None)
    floor = floor_reference(data, n=60, seed=0)
    # 60 independent draws from 20 molecules repeat themselves: at most 20 distinct, about 19 expected.
    assert floor["samples"] == 60 and floor["validity"] == 1.0 and floor["novelty"] == 0.0
    assert 15 / 60 <= floor["uniqueness"] <= 20 / 60


def test_fcd_of_identical_sets_is_about_zero_and_of_different_sets_is_not():
    assert abs(fcd(SMALL, SMALL)) < 1e-3
    assert fcd(SMALL, ALKANES + ["CCCCCCCCCC"] * 5) > 5


def test_nspdk_mmd_is_zero_for_identical_sets_and_the_kernel_is_normalised_and_order_invariant():
    assert nspdk_mmd(mols(SMALL), mols(SMALL)) == pytest.approx(0.0, abs=1e-12)
    assert nspdk_mmd(mols(SMALL), mols(ALKANES)) > 0.05
    ethanol = Chem.MolFromSmiles("CCO")
    assert nspdk_kernel(ethanol, ethanol) == pytest.approx(1.0)
    shuffled = Chem.MolFromSmiles("OC1CCOC1")
    renumbered = Chem.RenumberAtoms(shuffled, list(reversed(range(shuffled.GetNumAtoms()))))
    assert nspdk_features(shuffled) == pytest.approx(nspdk_features(renumbered))
    assert 0 < nspdk_kernel(Chem.MolFromSmiles("CCO"), Chem.MolFromSmiles("CCN")) < 1


def test_kl_benchmark_scores_one_for_identical_sets_and_less_for_shifted_ones():
    same = kl_benchmark(mols(SMALL), mols(SMALL))
    assert same["score"] == pytest.approx(1.0, abs=1e-6)
    assert kl_benchmark(mols(SMALL), mols(ALKANES))["score"] < 0.6


def test_internal_diversity_is_zero_for_copies_and_high_for_unrelated_molecules():
    assert internal_diversity(mols(["CCO"] * 5)) == pytest.approx(0.0)
    assert internal_diversity(mols(SMALL)) > 0.7


def test_auroc_on_known_cases():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert auroc(np.array([0.0]), np.array([-np.inf, 1.0])) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([np.nan]), np.array([1.0]))
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)


def test_spearman_against_exact_recovers_the_correlation_a_noisy_yardstick_hides():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=20_000)
    scores = exact + 0.4 * rng.normal(size=exact.size)
    estimates = exact[:, None] + 0.6 * rng.normal(size=(exact.size, 4))  # four noisy estimates of the target
    truth = spearman(scores, exact)
    repeatability = np.mean([spearman(estimates[:, i], estimates[:, j]) for i in range(4) for j in range(i + 1, 4)])
    single, pooled = spearman(scores, estimates[:, 0]), spearman(scores, estimates.mean(1))
    assert single < pooled < truth - 0.02  # the noisy yardsticks understate it, the single one most
    assert spearman_against_exact(single, repeatability, 1) == pytest.approx(truth, abs=0.01)
    assert spearman_against_exact(pooled, repeatability, 4) == pytest.approx(truth, abs=0.01)
    assert spearman_against_exact(0.5, 0.0, 2) is None and spearman_against_exact(0.99, 0.5, 1) == 1.0


@pytest.mark.slow
def test_interval_of_the_corrected_spearman_covers_the_truth_as_often_as_it_says():
    """Over independent draws of 1,000 molecules the 95% interval holds the population's exact-target
    Spearman in about 95% of draws, narrows with more molecules, and leaves out incomplete rows."""
    rng = np.random.default_rng(0)
    population = rng.normal(size=200_000)
    truth = spearman(population + 0.4 * rng.normal(size=population.size), population)

    def draw(n):
        exact = rng.normal(size=n)
        return exact + 0.4 * rng.normal(size=n), exact + 0.6 * rng.normal(size=n), exact + 0.6 * rng.normal(size=n)

    intervals = [spearman_against_exact_interval(*draw(1000), resamples=200, seed=k) for k in range(25)]
    covered = np.mean([low <= truth <= high for low, high in intervals])
    assert covered >= 0.8  # 95% nominal; 25 draws
    width = np.median([high - low for low, high in intervals])
    wider = spearman_against_exact_interval(*draw(250), resamples=200)
    assert 0.005 < width < wider[1] - wider[0]  # about twice as wide at a quarter of the molecules
    scores, first, second = draw(50)
    scores[:3] = np.nan
    assert spearman_against_exact_interval(scores, first, second, resamples=50) is not None
    assert spearman_against_exact_interval(scores[:4], first[:4], second[:4], resamples=50) is None  # 1 complete row


def test_calibration_of_uniform_percentiles_is_near_perfect_and_of_a_spike_is_not():
    uniform = calibration(np.random.default_rng(0).uniform(0, 100, 20_000))
    assert uniform["ks_distance"] < 0.02 and uniform["share_below_5th"] == pytest.approx(0.05, abs=0.01)
    assert sum(uniform["deciles"]) == pytest.approx(1.0, abs=1e-3)
    spike = calibration(np.full(100, 50.0))
    assert spike["ks_distance"] == pytest.approx(0.5) and spike["share_below_5th"] == 0.0


def test_single_edit_mutants_are_valid_new_connected_and_reproducible():
    parents = ["CCO", "c1ccccc1", "CC(=O)N", "C1CC1", "OCC#N", "CCCCCCCCC"]
    exclude = set(canonicalize(parents)) | {"CCN", "CC=O"}
    first = single_edit_mutants(parents, exclude, seed=3)
    assert first == single_edit_mutants(parents, exclude, seed=3)
    found = [m for m in first if m is not None]
    assert len(found) >= 5
    for mutant in found:
        mol = Chem.MolFromSmiles(mutant.smiles)
        assert mol is not None and len(Chem.GetMolFrags(mol)) == 1 and mol.GetNumAtoms() <= 9
        assert mutant.smiles not in exclude and mutant.smiles != mutant.parent
        assert {a.GetSymbol() for a in mol.GetAtoms()} <= {"C", "N", "O", "F"}
    assert len({m.smiles for m in found}) == len(found)


def test_knn_tanimoto_scores_training_molecules_highest_and_marks_bad_smiles():
    knn = TanimotoKNN(SMALL, k=1)
    scores = knn.score(["CCO", "CCCCCCCCCCCCCCCCCCCCC", "not a smiles"])
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] < 0.5
    assert np.isnan(scores[2])
    with pytest.raises(ValueError, match="at least k"):
        TanimotoKNN(["CCO"], k=5)


def test_mean_over_draws_averages_numbers_and_keeps_what_the_draws_share():
    draws = [{"samples": 10, "uniqueness": 0.96, "kl_test": {"score": 0.9, "kl": {"MolWt": 0.1}}, "fcd_test": None,
              "sampler": {"steps": 100}},
             {"samples": 10, "uniqueness": 0.98, "kl_test": {"score": 0.7, "kl": {"MolWt": 0.3}}, "fcd_test": 0.5,
              "sampler": {"steps": 100}}]
    mean = mean_over_draws(draws)
    assert mean["uniqueness"] == pytest.approx(0.97) and mean["kl_test"]["score"] == pytest.approx(0.8)
    assert mean["kl_test"]["kl"]["MolWt"] == pytest.approx(0.2)
    assert mean["samples"] == 10 and isinstance(mean["samples"], int) and mean["sampler"] == {"steps": 100}
    assert mean["fcd_test"] is None  # a draw without the figure leaves no mean to quote
    assert mean_over_draws(draws[:1]) == draws[0]


def _stand_in_qm9(folder):
    smiles = example_molecules()
    rows = pd.concat([smiles.iloc[:180], smiles[smiles.str.contains(r"\+|-")].head(20)])
    folder.mkdir()
    rows.to_frame().to_csv(folder / "qm9.csv", index=False)
    (folder / "qm9_test_idx.json").write_text(json.dumps({"test_idx": list(range(0, 200, 5))}))
    return folder


@pytest.mark.slow
def test_cli_evaluate_writes_a_complete_report_for_a_checkpoint(tiny_checkpoint, tmp_path):
    qm9 = _stand_in_qm9(tmp_path / "qm9")
    out = tmp_path / "report.json"
    arguments = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--qm9-path", str(qm9), "-n", "24",
                 "--density-molecules", "20", "--elbo-samples", "2", "--steps", "12"]
    result = CliRunner().invoke(app, [*arguments, "--draws", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    generation, density = report["generation"], report["density"]
    assert generation["samples"] == 24 and generation["validity"] == 1.0
    # Two draws of 24 (seeds 0 and 1), the figures their means; the second is what --seed 1 alone samples.
    assert [draw["seed"] for draw in generation["draws"]] == [0, 1] and report["settings"]["draws"] == 2
    for key in ("validity_without_correction", "uniqueness", "novelty", "fcd_test"):
        assert generation[key] == pytest.approx(np.mean([draw[key] for draw in generation["draws"]])), key
    assert "24 x 2 draws, seeds 0-1" in result.output
    alone = tmp_path / "seed1.json"
    assert CliRunner().invoke(app, [*arguments, "--draws", "1", "--seed", "1", "-o", str(alone)]).exit_code == 0
    single = json.loads(alone.read_text())["generation"]
    assert [draw["seed"] for draw in single["draws"]] == [1]
    for key in ("validity_without_correction", "uniqueness", "novelty", "fcd_test"):
        assert single[key] == pytest.approx(generation["draws"][1][key]), key
    assert 0 <= generation["validity_without_correction"] <= 1
    for key in ("fcd_test", "nspdk_mmd_test", "internal_diversity", "novelty", "uniqueness"):
        assert np.isfinite(generation[key]), key
    assert 0 <= density["log_density"]["auroc_vs_mutants"] <= 1
    assert 0 <= report["reference_knn_tanimoto"]["auroc_vs_mutants"] <= 1
    assert np.isfinite(density["nll_bound_test"]["mean"])
    assert density["calibration_test"]["molecules"] > 0
    assert -1 <= density["spearman_density_elbo_pooled"] <= 1
    corrected = density["spearman_density_elbo_corrected"]
    assert corrected is None or abs(corrected) >= abs(density["spearman_density_elbo_pooled"]) - 1e-12
    interval = density["spearman_density_elbo_corrected_interval"]
    assert interval is None or -1 <= interval[0] <= interval[1] <= 1
    assert "95% bootstrap interval over molecules" in result.output
    highest = density["highest_test"]
    assert len(highest) == 10 and all(row["log_density"] <= 0 for row in highest)
    assert [row["log_density"] for row in highest] == sorted((row["log_density"] for row in highest), reverse=True)
    assert all(row["count"] >= 30 for row in density["by_heavy_atoms"])  # 20 molecules: no size has enough
    assert report["generation"]["sampler"]["temperature"] == 1.0 and report["generation"]["sampler"]["steps"] == 12
    assert "Spearman(D, ELBO)" in result.output and "FCD vs test" in result.output


def test_cli_evaluate_scores_another_models_samples_and_counts_bad_rows(tmp_path):
    qm9 = _stand_in_qm9(tmp_path / "qm9")
    samples = tmp_path / "samples.csv"
    pd.DataFrame({"smiles": ["CCO", "CCO", "C1CC", "", "CC(=O)N", "OCC#N"]}).to_csv(samples, index=False)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["evaluate", "--samples", str(samples), "--qm9-path", str(qm9), "-o", str(out)])
    assert result.exit_code == 0, result.output
    generation = json.loads(out.read_text())["generation"]
    assert generation["samples"] == 6
    assert generation["validity"] == pytest.approx(4 / 6) and generation["uniqueness"] == pytest.approx(3 / 4)


def test_cli_evaluate_reports_a_missing_samples_file_cleanly(tmp_path):
    qm9 = _stand_in_qm9(tmp_path / "qm9")
    result = CliRunner().invoke(app, ["evaluate", "--samples", str(tmp_path / "nope.csv"), "--qm9-path", str(qm9),
                                      "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_agreement_by_group_reports_each_large_enough_group():
    from molgen.stats import agreement_by_group

    rng = np.random.default_rng(0)
    groups = np.repeat([3, 5, 9], [40, 10, 60])
    targets = rng.normal(size=110)
    scores = np.where(groups == 9, -targets, targets + 1.0)  # size 9 ranked backwards, the others shifted by 1
    rows = agreement_by_group(scores, targets, groups, min_count=30)
    assert [row["group"] for row in rows] == [3, 9] and [row["count"] for row in rows] == [40, 60]
    assert rows[0]["spearman"] == pytest.approx(1.0) and rows[0]["mean_absolute_difference"] == pytest.approx(1.0)
    assert rows[1]["spearman"] == pytest.approx(-1.0)

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem
from typer.testing import CliRunner

import molgen
from molgen.checkpoint import load_model
from molgen.checks import CheckConfig
from molgen.chemistry import fragment_count
from molgen.cli import app
from molgen.pipeline import GenerateOptions, generate
from molgen.sampler import SamplerSettings
from molgen.scoring import density_percentile, thin_to_data_profile

COLUMNS = ["smiles", "raw_valid", "unique", "novel", "log_density", "density_percentile", "passed_density",
           "passed_checks", "failed_checks", "mw", "qed", "sa_score", "rank"]


def test_every_sample_has_a_row_valid_and_connected(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    options = GenerateOptions(n=37, batch_size=10, sampler=SamplerSettings(steps=10),
                              checks=CheckConfig.from_strings(windows=["qed>=0.3"]))
    frame, stats = generate(loaded, options)
    assert len(frame) == 37 and stats["proposed"] == 37
    assert set(COLUMNS) <= set(frame.columns)
    for smiles in frame["smiles"]:
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None and fragment_count(mol) == 1
    assert frame["unique"].sum() == frame["smiles"].nunique()
    assert frame["novel"].notna().all()  # the checkpoint carries the training-set hashes
    ranked = frame["rank"].dropna().astype(int).tolist()
    assert ranked == list(range(1, len(ranked) + 1))  # ranks are 1..k, best first
    eligible = frame["unique"] & frame["passed_density"] & frame["passed_checks"]
    assert frame["rank"].notna().tolist() == eligible.tolist()
    top = frame[frame["rank"].notna()]
    assert top["log_density"].is_monotonic_decreasing
    assert ((frame["density_percentile"] >= 0) & (frame["density_percentile"] <= 100)).all()


def test_same_seed_same_molecules(tiny_checkpoint):
    model = molgen.load(tiny_checkpoint)
    a = model.generate(20, seed=3, steps=8, corrector_steps=1)
    b = model.generate(20, seed=3, steps=8, corrector_steps=1)
    c = model.generate(20, seed=4, steps=8, corrector_steps=1)
    cooled = model.generate(20, seed=3, steps=8, corrector_steps=1, temperature=0.3)
    pd.testing.assert_frame_equal(a, b)
    assert a["smiles"].tolist() != c["smiles"].tolist()
    assert a["smiles"].tolist() != cooled["smiles"].tolist()  # the temperature reaches the sampler


def test_mala_acceptance_rate_is_reported_only_for_mala(tiny_checkpoint):
    model = molgen.load(tiny_checkpoint)
    model.generate(30, seed=0, steps=8, corrector_steps=1, mala=True)
    assert 0.0 < model.last_stats["acceptance_rate"] < 1.0
    model.generate(30, seed=0, steps=8, corrector_steps=1)  # unadjusted moves: no Metropolis test, no rate
    assert model.last_stats["acceptance_rate"] is None
    assert model.last_stats["corrector_moves"] == 30 * 8


def test_density_percentile_interpolates_calibration():
    quantiles = [-40.0, -30.0, -20.0]  # 0th, 50th, 100th percentile
    assert density_percentile([-50.0, -30.0, -25.0, 0.0], quantiles).tolist() == [0.0, 50.0, 75.0, 100.0]


def test_generate_cli_end_to_end(tiny_checkpoint, tmp_path):
    out = tmp_path / "candidates.csv"
    args = ["generate", "-n", "24", "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--steps", "8",
            "--batch-size", "10", "--prop", "qed>=0.2", "--sdf", str(tmp_path / "top.sdf"),
            "--grid", str(tmp_path / "top.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert len(frame) == 24 and set(COLUMNS) <= set(frame.columns)
    for label in ("proposed", "valid without correction", "unique", "novel", "passed density", "passed checks"):
        assert label in result.output
    assert (tmp_path / "top.png").stat().st_size > 1000
    ranked = frame["rank"].notna().sum()
    records = list(Chem.SDMolSupplier(str(tmp_path / "top.sdf")))
    assert len(records) == ranked and all(record is not None for record in records)
    # Each record carries every output column as a data item, the rank included.
    assert [int(record.GetProp("rank")) for record in records] == list(range(1, ranked + 1))
    assert records[0].GetProp("smiles") == frame["smiles"].iat[0]

    unfiltered = CliRunner().invoke(app, args[:5] + ["--checkpoint", str(tiny_checkpoint), "--steps", "8", "--no-filter"])
    assert unfiltered.exit_code == 0
    retired = CliRunner().invoke(app, args[:5] + ["--mean-estimate"])
    assert retired.exit_code == 2 and "No such option" in retired.output
    assert pd.read_csv(out)["rank"].notna().sum() == pd.read_csv(out)["unique"].sum()


@pytest.mark.parametrize("args, message", [
    (["--prop", "bogus>1"], "unknown property"),
    (["--checkpoint", "missing.pt"], "does not exist"),
    (["--distribution", "zinc"], "unknown distribution 'zinc'"),
    (["--temperature", "-1"], "--temperature"),
])
def test_generate_usage_errors(tiny_checkpoint, tmp_path, args, message):
    base = ["generate", "-n", "4", "-o", str(tmp_path / "o.csv"), "--steps", "4"]
    if "--checkpoint" not in args:
        base += ["--checkpoint", str(tiny_checkpoint)]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_export_keeps_outputs_and_info_prints_the_card(tiny_checkpoint, tmp_path):
    slim = tmp_path / "slim.pt"
    result = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-o", str(slim)])
    assert result.exit_code == 0, result.output
    assert slim.stat().st_size < tiny_checkpoint.stat().st_size  # optimizer and raw weights dropped
    full, exported = molgen.load(tiny_checkpoint), molgen.load(slim)
    smiles = ["CCO", "OC1CC1", "C#N"]
    pd.testing.assert_frame_equal(full.score(smiles), exported.score(smiles))
    half = tmp_path / "half.pt"
    assert CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-o", str(half), "--half"]).exit_code == 0
    difference = (molgen.load(half).score(smiles)["log_density"] - full.score(smiles)["log_density"]).abs()
    assert difference.max() < 0.5  # nats
    card = CliRunner().invoke(app, ["info", "--checkpoint", str(slim)])
    assert card.exit_code == 0
    for label in ("distributions", "parameters", "training", "val_elbo_nats", "spearman_density_elbo"):
        assert label in card.output


def test_export_carries_evaluation_figures_into_the_card(tiny_checkpoint, tmp_path):
    import json

    report = {
        "generation": {"samples": 10000, "validity_without_correction": 0.9, "uniqueness": 0.99, "novelty": 0.5,
                       "fcd_test": 0.4, "nspdk_mmd_test": 0.001, "kl_test": {"score": 0.95},
                       "sampling_molecules_per_second": 40.0},
        "density": {"nll_bound_test": {"mean": 17.0}, "spearman_density_elbo": 0.8,
                    "spearman_density_elbo_corrected_interval": [0.81, 0.86],
                    "log_density": {"auroc_vs_mutants": 0.6}, "calibration_test": {"share_below_5th": 0.05}},
        "reference_knn_tanimoto": {"auroc_vs_mutants": 0.9},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    slim = tmp_path / "slim.pt"
    result = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-o", str(slim),
                                      "--evaluation", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert molgen.load(slim).card.evaluation["fcd_test"] == 0.4
    card = CliRunner().invoke(app, ["info", "--checkpoint", str(slim)])
    assert "fcd_test" in card.output and "auroc_vs_mutants_knn_tanimoto" in card.output
    assert "0.81 to 0.86" in card.output  # an interval, as two bounds
    (tmp_path / "partial.json").write_text(json.dumps({"generation": {}}))
    bad = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-o", str(slim),
                                   "--evaluation", str(tmp_path / "partial.json")])
    assert bad.exit_code == 2 and "KeyError" in bad.output


def test_profile_rule_thins_over_filled_upper_bins_to_the_data_share_and_nothing_else():
    rng = np.random.default_rng(0)
    # 20,000 samples: the data's profile (uniform percentiles), plus an extra 3,000 in the top bin and
    # 3,000 in the lowest; the upper bins' excess is thinned, the lower half is left alone.
    percentile = np.concatenate([rng.uniform(0, 100, 14_000), rng.uniform(95, 100, 3_000), rng.uniform(0, 5, 3_000)])
    keep = thin_to_data_profile(percentile, seed=1)
    kept_per_bin = np.bincount((percentile[keep] // 5).astype(int), minlength=20)
    assert keep[percentile < 50].all()  # the lower half, the over-filled lowest bin included
    # The top bin keeps about its data share of all samples (1/20 of 20,000) instead of 3,700.
    assert abs(kept_per_bin[19] - 1000) < 100
    assert (kept_per_bin[10:19] == np.bincount((percentile // 5).astype(int), minlength=20)[10:19]).all()
    assert thin_to_data_profile(percentile, seed=1).tolist() == keep.tolist()  # seeded
    assert thin_to_data_profile(percentile, seed=2).tolist() != keep.tolist()


def test_profile_rule_keeps_a_sampler_that_matches_the_data_small_runs_and_unscored_rows():
    rng = np.random.default_rng(0)
    matched = rng.uniform(0, 100, 20_000)
    assert thin_to_data_profile(matched, seed=0).mean() > 0.98
    # Twenty samples all in the top bin: without the prior the rule would keep 1 in 20; with 10
    # pseudo-samples per bin its estimate of the bin's share is 30/220, and it keeps about 37%.
    assert thin_to_data_profile(np.full(2000, 97.0), seed=0).mean() < 0.1
    assert 0.2 < thin_to_data_profile(np.full(20, 97.0), seed=0).mean() < 0.6
    keep = thin_to_data_profile(np.array([np.nan, 99.0, np.nan]), seed=0)
    assert keep[0] and keep[2]


def test_generate_marks_thinned_rows_and_can_turn_the_rule_off(tiny_checkpoint):
    model = molgen.load(tiny_checkpoint)
    frame = model.generate(60, seed=2, steps=8)
    assert frame["thinned"].dtype == bool and not (frame["thinned"] & ~frame["unique"]).any()
    assert not (frame["thinned"] & frame["passed_density"]).any()
    assert model.last_stats["thinned"] == int(frame["thinned"].sum())
    plain = model.generate(60, seed=2, steps=8, match_profile=False)
    assert not plain["thinned"].any()


@pytest.mark.parametrize("apply_filters, min_percentile", [(False, 0.5), (True, 0.0)])
def test_a_sample_the_density_head_cannot_read_stays_unranked_and_is_counted(tiny_checkpoint, monkeypatch,
                                                                              apply_filters, min_percentile):
    """A decoded sample outside the model's domain has no log_density: with --no-filter or --min-percentile
    0 it is still eligible, and ranking it must not fail (it did: 'Cannot convert non-finite values')."""
    import molgen.pipeline as pipeline

    class Blind(pipeline.Scorer):
        def score_smiles(self, smiles, index=None):
            scores = super().score_smiles(smiles, index)
            scores.iloc[0, scores.columns.get_loc("log_density")] = np.nan
            scores.iloc[0, scores.columns.get_loc("density_percentile")] = np.nan
            return scores

    monkeypatch.setattr(pipeline, "Scorer", Blind)
    loaded = load_model(tiny_checkpoint)
    frame, stats = generate(loaded, GenerateOptions(n=20, seed=0, sampler=SamplerSettings(steps=6),
                                                    apply_filters=apply_filters, min_percentile=min_percentile))
    assert len(frame) == 20 and stats["unscored"] == 1
    unscored = frame[frame["log_density"].isna()]
    assert len(unscored) == 1 and unscored["rank"].isna().all()
    ranked = frame.dropna(subset=["rank"])
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert ranked["log_density"].is_monotonic_decreasing


def test_generate_without_calibration_says_why_nothing_passes_the_density_floor(tmp_path, tiny_checkpoint):
    """The null distribution has no percentiles: a floor rejects every sample, and the run says why."""
    from typer.testing import CliRunner

    import pandas as pd
    from molgen.cli import app

    out = tmp_path / "null.csv"
    base = ["generate", "-n", "16", "--steps", "10", "--seed", "0", "--dist", "null", "--checkpoint",
            str(tiny_checkpoint), "-o", str(out)]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    assert "no density calibration for --dist null" in result.output and "--min-percentile 0" in result.output
    frame = pd.read_csv(out)
    assert frame["density_percentile"].isna().all() and frame["rank"].isna().all()
    result = CliRunner().invoke(app, base + ["--min-percentile", "0"])
    assert result.exit_code == 0 and "no density calibration" not in result.output
    ranked = pd.read_csv(out).dropna(subset=["rank"])
    assert len(ranked) > 0 and ranked["log_density"].is_monotonic_decreasing

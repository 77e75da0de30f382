"""The MOSES protocol (molgen evaluate --dist moses) on stand-in files shaped like MOSES's."""

import gzip
import json

import pandas as pd
import pytest
from conftest import example_molecules
from rdkit import Chem
from typer.testing import CliRunner

from molgen.checkpoint import read_checkpoint, save_checkpoint
from molgen.cli import app
from molgen.evaluation.moses import ReferenceStatistics, cosine_similarity, moses_metrics, passes_filters, scaffolds

runner = CliRunner()


@pytest.fixture(scope="module")
def moses_folder(tmp_path_factory):
    """train.csv.gz / test.csv.gz with MOSES's SMILES header, cut from the example molecules."""
    folder = tmp_path_factory.mktemp("moses")
    smiles = example_molecules().tolist()
    for name, rows in (("train", smiles[:600]), ("test", smiles[600:700])):
        with gzip.open(folder / f"{name}.csv.gz", "wt") as handle:
            handle.write("SMILES\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def moses_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with its one distribution named moses."""
    payload = read_checkpoint(tiny_checkpoint)
    payload["distributions"] = ["moses"]
    payload["calibration"] = {"moses": payload["calibration"]["qm9"]}
    path = tmp_path_factory.mktemp("moses-model") / "model.pt"
    save_checkpoint(payload, path)
    return path


def test_moses_filters_match_the_benchmarks_rules():
    assert passes_filters(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))
    assert not passes_filters(Chem.MolFromSmiles("CC(=O)[O-]"))  # charged
    assert not passes_filters(Chem.MolFromSmiles("C1CCCCCCC1"))  # an 8-membered ring
    assert not passes_filters(Chem.MolFromSmiles("CCI"))  # iodine is not among its elements
    assert not passes_filters(Chem.MolFromSmiles("CC=CC#N"))  # MCF1: an acrylonitrile
    assert not passes_filters(Chem.MolFromSmiles("CCCCCl"))  # MCF4: a primary alkyl halide


def test_metrics_of_the_reference_itself_are_the_ceiling():
    smiles = example_molecules().tolist()[:150]
    reference = ReferenceStatistics.of(smiles)
    metrics = moses_metrics(smiles + ["not a molecule"], reference, set(smiles[:100]), with_fcd=False)
    assert metrics["valid"] == pytest.approx(150 / 151)
    assert metrics["snn_test"] == pytest.approx(1.0) and metrics["frag_test"] == pytest.approx(1.0)
    assert metrics["novelty"] == pytest.approx(50 / 150)
    assert 0 < metrics["int_div2"] < metrics["int_div"] + 0.1 and "unique@1000" not in metrics
    assert cosine_similarity(scaffolds([Chem.MolFromSmiles("c1ccc2ccccc2c1")]), scaffolds([])) is None


def test_evaluate_dist_moses_on_a_checkpoint_and_on_samples(moses_folder, moses_checkpoint, tmp_path):
    report_path = tmp_path / "moses.json"
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(moses_folder), "--checkpoint",
                                 str(moses_checkpoint), "-n", "30", "--steps", "4", "--density-molecules", "20",
                                 "--elbo-samples", "4", "-o", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    generation, floor = report["generation"], report["reference_train_sample"]
    assert generation["samples"] == 30 == floor["samples"]
    for key in ("valid", "valid_without_correction", "fcd_test", "snn_test", "frag_test", "int_div", "filters", "novelty"):
        assert generation[key] is not None, key
    assert floor["novelty"] == 0.0  # drawn from the training set
    assert 0.0 <= report["density"]["log_density"]["auroc_vs_mutants"] <= 1.0
    assert "auroc_vs_mutants" in report["reference_knn_tanimoto"] and report["decoys"]["mutants"] > 0
    assert "FCD/Test" in result.output and "train sample" in result.output

    samples = tmp_path / "samples.csv"
    samples.write_text("smiles\n" + "\n".join(example_molecules().tolist()[700:740]) + "\nnope\n")
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(moses_folder), "--samples",
                                 str(samples), "-o", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["generation"]["valid"] == pytest.approx(40 / 41) and "density" not in report
    assert "valid_without_correction" not in report["generation"]  # a bare SMILES file does not say


def test_evaluate_dist_moses_on_generated_chunks_keeps_raw_validity_and_the_checkpoints_density(
        moses_folder, moses_checkpoint, tmp_path):
    """Samples drawn in resumable chunks by `molgen generate` and joined: the same report as sampling in
    evaluate, validity without correction read from their raw_valid column."""
    chunks = []
    for seed in (0, 1):
        path = tmp_path / f"chunk{seed}.csv"
        result = runner.invoke(app, ["generate", "--checkpoint", str(moses_checkpoint), "--dist", "moses", "-n", "12",
                                     "--steps", "4", "--seed", str(seed), "--no-filter", "-o", str(path)])
        assert result.exit_code == 0, result.output
        chunks.append(pd.read_csv(path))
    joined = pd.concat(chunks)
    joined.to_csv(tmp_path / "samples.csv", index=False)
    report_path = tmp_path / "moses.json"
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(moses_folder), "--samples",
                                 str(tmp_path / "samples.csv"), "--checkpoint", str(moses_checkpoint),
                                 "--density-molecules", "20", "--elbo-samples", "4", "-o", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["generation"]["samples"] == 24
    assert report["generation"]["valid_without_correction"] == pytest.approx(joined["raw_valid"].mean())
    assert 0.0 <= report["density"]["log_density"]["auroc_vs_mutants"] <= 1.0
    assert report["checkpoint"] == str(moses_checkpoint) and report["samples_file"].endswith("samples.csv")

    joined.assign(raw_valid=["True"] * 23 + ["maybe"]).to_csv(tmp_path / "bad.csv", index=False)
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(moses_folder), "--samples",
                                 str(tmp_path / "bad.csv"), "-o", str(report_path)])
    assert result.exit_code == 2 and "row 23: raw_valid is 'maybe'" in result.output
    result = runner.invoke(app, ["evaluate", "--samples", str(tmp_path / "samples.csv"), "--checkpoint",
                                 str(moses_checkpoint), "-o", str(report_path)])
    assert result.exit_code == 2 and "--dist moses takes both" in " ".join(result.output.split())


def test_evaluate_dist_moses_says_what_is_missing(moses_folder, tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(tmp_path), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "has no train.csv.gz or test.csv.gz" in result.output
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(moses_folder), "--checkpoint",
                                 str(tiny_checkpoint), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "has no moses distribution (it has qm9)" in result.output
    result = runner.invoke(app, ["evaluate", "--dist", "zinc", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "the protocols are qm9 and moses" in result.output

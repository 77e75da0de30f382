"""The MOSES protocol (molgen evaluate --dist moses) on stand-in files shaped like MOSES's."""

import gzip
import json

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


def test_evaluate_dist_moses_says_what_is_missing(moses_folder, tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(tmp_path), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "has no train.csv.gz or test.csv.gz" in result.output
    result = runner.invoke(app, ["evaluate", "--dist", "moses", "--moses-path", str(moses_folder), "--checkpoint",
                                 str(tiny_checkpoint), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "has no moses distribution (it has qm9)" in result.output
    result = runner.invoke(app, ["evaluate", "--dist", "zinc", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "the protocols are qm9 and moses" in result.output

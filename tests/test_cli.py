import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import shared_file
from typer.testing import CliRunner

from molgen.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "check" in result.output and "data" in result.output


def test_scoring_and_generating_do_not_load_torch_geometric():
    # Importing it costs seconds at every start-up; only training, data preparation, adapt and PyG interop need it.
    code = ("import sys, molgen.cli, molgen.api; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch_geometric' or m == 'molgen.pyg'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_check_keeps_every_row_and_column_and_appends_results(tmp_path):
    out = tmp_path / "checked.csv"
    result = runner.invoke(app, ["check", str(EXAMPLES / "candidates.csv"), "-o", str(out), "--prop", "qed>=0.5"])
    assert result.exit_code == 0, result.output
    source = pd.read_csv(EXAMPLES / "candidates.csv", dtype=str, keep_default_na=False)
    checked = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(checked) == len(source)
    assert checked[list(source.columns)].equals(source)  # input columns first, unchanged
    status = dict(zip(checked["name"], checked["status"]))
    assert status["unclosed ring"] == status["pentavalent carbon"] == status["empty"] == "invalid_smiles"
    assert status["chloroform"] == status["sodium acetate"] == "ok"  # RDKit checks need no model domain
    failed = dict(zip(checked["name"], checked["failed_checks"]))
    assert "pains:ene_rhod_A(235)" in failed["rhodanine, benzylidene"]
    assert "qed>=0.5" in failed["ethanol"] and failed["ibuprofen"] == ""
    assert "invalid_smiles" in result.output and "passed all checks" in result.output


def test_check_strict_stops_at_the_first_bad_row(tmp_path):
    out = tmp_path / "checked.csv"
    result = runner.invoke(app, ["check", str(EXAMPLES / "candidates.csv"), "-o", str(out), "--strict"])
    assert result.exit_code == 1
    assert "row 11: invalid_smiles" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())  # no partial output left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prop", "potency>3"], "unknown property 'potency'"),
        (["--rule", "lipinksi"], "unknown rule 'lipinksi'"),
        (["--smiles-column", "SMILES"], "no column 'SMILES' in the input; columns are: id, name, smiles"),
    ],
)
def test_check_usage_errors_exit_2_with_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["check", str(EXAMPLES / "candidates.csv"), "-o", str(tmp_path / "o.csv"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_check_missing_input_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["check", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_data_prepare_prints_statuses_and_splits(tmp_path):
    source = tmp_path / "mols.csv"
    source.write_text("smiles\nC\nCO\nCCCCCCCCCCCC\nnope\n")
    first = runner.invoke(app, ["data", "prepare", str(source), "--max-atoms", "9"])
    assert first.exit_code == 0, first.output
    assert "status ok" in first.output and "status out_of_domain" in first.output
    assert "split train" in first.output and "prepared in" in first.output
    second = runner.invoke(app, ["data", "prepare", str(source), "--max-atoms", "9"])
    assert "loaded from cache in" in second.output


def test_data_prepare_without_qm9_explains_how_to_get_it():
    result = runner.invoke(app, ["data", "prepare"])
    assert result.exit_code == 2 and "QM9 not found" in result.output


@pytest.mark.slow
def test_bbbp_every_row_kept_and_strict_names_the_row(tmp_path):
    bbbp = shared_file("molnet/bbbp.csv")
    out = tmp_path / "bbbp.csv"
    command = [sys.executable, "-m", "molgen", "check", str(bbbp), "-o", str(out), "--workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    checked = pd.read_csv(out)
    assert len(checked) == 2050
    assert (checked["status"] == "invalid_smiles").sum() == 11
    assert checked["num"].tolist() == pd.read_csv(bbbp)["num"].tolist()  # row order kept
    strict = subprocess.run(command + ["--strict"], capture_output=True, text=True)
    assert strict.returncode == 1
    assert "row 60: invalid_smiles" in strict.stderr and "Traceback" not in strict.stderr

import gzip
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import example_molecules
from typer.testing import CliRunner

import molgen
from molgen.checkpoint import read_checkpoint, save_checkpoint
from molgen.cli import app

runner = CliRunner()

MESSY = (
    b'id,smiles,note\n'
    b'1,CCO,"plain, quoted"\n'
    b'2,,empty smiles\n'
    b'\n'
    b'4,C1CC,unclosed ring\n'
    b'5,CC(=O)[O-].[Na+],salt\n'
    b'6,CCCl,chlorine\n'
    b'7,CCCCCCCCCCCCCCCCCCCC,twenty carbons\n'
    b'8,C\xff\xfeO,bad bytes\n'
    b'9,"C1=CC=CC=C1",quoted smiles\n'
    b'10,[CH3],radical\n'
    b'11,C[N+](=O)[O-],nitro\n'
)


def test_score_messy_input_every_row_has_a_status_and_reason(tiny_checkpoint, tmp_path):
    source = tmp_path / "messy.csv"
    source.write_bytes(MESSY)
    out = tmp_path / "scored.csv"
    result = runner.invoke(app, ["score", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--workers", "1", "--chunk-size", "4"])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(scored) == 11  # ten data lines and the blank one
    assert scored["id"].tolist() == ["1", "2", "", "4", "5", "6", "7", "8", "9", "10", "11"]
    status = dict(zip(scored["note"], zip(scored["status"], scored["reason"])))
    assert status["plain, quoted"] == ("ok", "")
    assert status["empty smiles"] == ("invalid_smiles", "empty SMILES")
    assert status[""] == ("invalid_smiles", "empty SMILES")
    assert status["unclosed ring"][0] == "invalid_smiles"
    assert status["salt"] == ("out_of_domain", "element Na not in vocabulary")
    assert status["chlorine"] == ("out_of_domain", "element Cl not in vocabulary")
    assert status["twenty carbons"][0] == "out_of_domain"
    assert status["twenty carbons"][1].startswith("20 heavy atoms > ")  # the tiny model's N
    assert status["bad bytes"] == ("invalid_smiles", "SMILES contains bytes that are not valid UTF-8")
    assert status["quoted smiles"] == ("ok", "")
    assert status["radical"] == ("out_of_domain", "1 radical electron(s)")
    assert status["nitro"] == ("ok", "")
    ok = scored["status"] == "ok"
    assert scored.loc[ok, "log_density"].astype(float).notna().all()
    assert (scored.loc[~ok, "log_density"] == "").all()
    assert "status out_of_domain: 4" in result.output


def test_score_strict_stops_naming_the_row(tiny_checkpoint, tmp_path):
    source = tmp_path / "messy.csv"
    source.write_bytes(MESSY)
    result = runner.invoke(app, ["score", str(source), "-o", str(tmp_path / "o.csv"), "--checkpoint",
                                 str(tiny_checkpoint), "--workers", "1", "--strict"])
    assert result.exit_code == 1
    assert "row 2: invalid_smiles: empty SMILES (--strict)" in result.output
    assert not list(tmp_path.glob("o.csv*"))


@pytest.mark.parametrize("name", ["in.smi.gz", "in.sdf", "in.tsv"])
def test_score_other_formats(tiny_checkpoint, tmp_path, name):
    from rdkit import Chem

    smiles = ["CCO", "C#N", "OC1CC1", "CCCl"]
    path = tmp_path / name
    if name.endswith(".smi.gz"):
        with gzip.open(path, "wt") as handle:
            handle.write("".join(f"{s} mol{i}\n" for i, s in enumerate(smiles)))
    elif name.endswith(".sdf"):
        writer = Chem.SDWriter(str(path))
        for s in smiles:
            writer.write(Chem.MolFromSmiles(s))
        writer.close()
    else:
        pd.DataFrame({"smiles": smiles}).to_csv(path, sep="\t", index=False)
    out = tmp_path / "out.csv.gz"
    result = runner.invoke(app, ["score", str(path), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--workers", "1"])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    assert scored["status"].tolist() == ["ok", "ok", "ok", "out_of_domain"]


def test_filter_writes_passing_rows_and_reports_each_criterion(tiny_checkpoint, tmp_path):
    source = tmp_path / "in.csv"
    pd.DataFrame({"smiles": ["CCO", "C#N", "OC1CC1", "CCCl", "nope", "CC(=O)O", "NCC(=O)O"]}).to_csv(source, index=False)
    out = tmp_path / "kept.csv"
    args = ["filter", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--workers", "1",
            "--min-percentile", "0", "--prop", "mw>=50", "--alerts", "brenk"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    kept = pd.read_csv(out)
    assert set(kept["smiles"]) == {"OC1CC1", "CC(=O)O", "NCC(=O)O"}  # CCO and C#N are lighter than 50
    assert kept["passed"].all()
    assert "removed by mw>=50: 2" in result.output
    assert "removed by out_of_domain: 1" in result.output and "removed by invalid_smiles: 1" in result.output
    everything = runner.invoke(app, args + ["--keep-failed"])
    assert everything.exit_code == 0
    full = pd.read_csv(out, keep_default_na=False)
    assert len(full) == 7 and full["passed"].sum() == 3
    assert full.loc[full["smiles"] == "CCCl", "failed_checks"].item() == "out_of_domain;brenk:alkyl_halide"


def test_python_api_score_and_filter(tiny_checkpoint):
    model = molgen.load(tiny_checkpoint)
    scored = model.score(["CCO", "bad(", "CCCl"])
    assert scored["status"].tolist() == ["ok", "invalid_smiles", "out_of_domain"]
    frame = pd.DataFrame({"name": ["a", "b"], "smi": ["CCO", "OC1CC1"]})
    filtered = molgen.filter_frame(frame, model, smiles_column="smi", min_percentile=0, props=("mw>=50",))
    assert filtered["name"].tolist() == ["a", "b"] and filtered["passed"].tolist() == [False, True]
    exact = model.score("OC1CC1", exact=True)
    assert exact["elbo_nats"].item() < 0 and exact["elbo_stderr"].item() >= 0


def test_log_ratio_is_the_difference_of_two_distributions_log_densities(tiny_checkpoint, tmp_path):
    model = molgen.load(tiny_checkpoint)
    molecules = ["CCO", "bad(", "OC1CC1", "CC#N", "CCCl"]
    scored = model.score(molecules, versus="null")
    under_null = model.score(molecules, distribution="null")
    ok = scored["status"] == "ok"
    assert ok.sum() == 3 and scored.loc[~ok, "log_ratio"].isna().all()
    expected = scored["log_density"] - under_null["log_density"]
    assert np.allclose(scored.loc[ok, "log_ratio"], expected[ok], atol=1e-5)
    assert scored.loc[ok, "log_ratio"].abs().max() > 1e-3  # the distribution id changes the density
    with pytest.raises(ValueError, match="the scored distribution itself"):
        model.score(molecules, distribution="null", versus="null")
    # The command line appends the same column, and says what is wrong with a bad name.
    path = tmp_path / "in.csv"
    pd.DataFrame({"smiles": molecules}).to_csv(path, index=False)
    result = runner.invoke(app, ["score", str(path), "--checkpoint", str(tiny_checkpoint), "--versus", "null",
                                 "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "out.csv")
    assert np.allclose(written["log_ratio"], scored["log_ratio"], atol=1e-4, equal_nan=True)
    result = runner.invoke(app, ["score", str(path), "--checkpoint", str(tiny_checkpoint), "--versus", "zinc",
                                 "-o", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2 and "unknown distribution 'zinc'" in result.output


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_output(tiny_checkpoint, tmp_path):
    smiles = pd.concat([example_molecules()] * 5).iloc[:6000]
    source = tmp_path / "in.csv"
    smiles.to_frame().to_csv(source, index=False)
    base = [sys.executable, "-m", "molgen", "score", str(source), "--checkpoint", str(tiny_checkpoint),
            "--chunk-size", "200", "--workers", "1", "--batch-size", "64"]
    straight = tmp_path / "straight.csv"
    subprocess.run(base + ["-o", str(straight)], check=True, capture_output=True)

    out = tmp_path / "resumed.csv"
    progress = tmp_path / "resumed.csv.progress"
    target_rows = random.Random(7).randrange(400, 4000)
    process = subprocess.Popen(base + ["-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if progress.exists() and '"rows": ' in progress.read_text():
            import json

            if json.loads(progress.read_text())["rows"] >= target_rows:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the run finished before it could be killed"
    done = subprocess.run(base + ["-o", str(out), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "6,000 rows (" in done.stdout and "done before --resume" in done.stdout
    status_counts = [int(line.split(":")[1].replace(",", "")) for line in done.stdout.splitlines()
                     if line.strip().startswith("status ")]
    assert sum(status_counts) == 6000  # the summary counts the rows of both runs
    assert out.read_bytes() == straight.read_bytes()
    assert len(pd.read_csv(out)) == 6000


def test_score_to_sdf_keeps_every_row_as_a_record(tiny_checkpoint, tmp_path):
    from rdkit import Chem

    source = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2, 3], "structure": ["CCO", "bad(", "OC1CC1"]}).to_csv(source, index=False)
    out = tmp_path / "scored.sdf"
    result = runner.invoke(app, ["score", str(source), "-o", str(out), "--smiles-column", "structure",
                                 "--checkpoint", str(tiny_checkpoint), "--workers", "1"])
    assert result.exit_code == 0, result.output
    records = list(Chem.SDMolSupplier(str(out)))
    assert len(records) == 3
    assert [r.GetProp("status") for r in records] == ["ok", "invalid_smiles", "ok"]
    assert records[1].GetNumAtoms() == 0 and records[2].GetNumAtoms() == 4
    assert float(records[0].GetProp("log_density")) < 0
    smi = runner.invoke(app, ["score", str(source), "-o", str(tmp_path / "o.smi"), "--smiles-column", "structure",
                              "--checkpoint", str(tiny_checkpoint)])
    assert smi.exit_code == 2 and "no room for the appended columns" in smi.output


@pytest.fixture(scope="module")
def uncalibrated_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint without its calibration quantiles: no density percentile for any row."""
    payload = read_checkpoint(tiny_checkpoint)
    payload.pop("calibration")
    path = tmp_path_factory.mktemp("uncalibrated") / "checkpoint.pt"
    save_checkpoint(payload, path)
    return path


def test_a_missing_percentile_fails_every_threshold_above_zero_in_generate_and_filter(uncalibrated_checkpoint, tmp_path):
    generated = tmp_path / "generated.csv"
    base = ["generate", "-n", "12", "--steps", "4", "--checkpoint", str(uncalibrated_checkpoint), "-o", str(generated),
            "--rule", "lipinski", "--alerts", ""]
    for threshold, passes in (("5", False), ("0", True)):
        result = runner.invoke(app, base + ["--min-percentile", threshold])
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(generated)
        assert frame["density_percentile"].isna().all()
        assert frame["passed_density"].tolist() == [passes] * 12
        assert frame["rank"].notna().any() == passes
    source = tmp_path / "in.csv"
    pd.DataFrame({"smiles": ["CCO", "OC1CC1", "CC(=O)O"]}).to_csv(source, index=False)
    kept = tmp_path / "kept.csv"
    for threshold, passes in (("5", False), ("0", True)):
        result = runner.invoke(app, ["filter", str(source), "-o", str(kept), "--checkpoint", str(uncalibrated_checkpoint),
                                     "--workers", "1", "--keep-failed", "--min-percentile", threshold])
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(kept, keep_default_na=False)
        assert frame["passed"].tolist() == [passes] * 3
        assert frame["failed_checks"].tolist() == (["", "", ""] if passes else ["density<p5"] * 3)

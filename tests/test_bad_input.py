"""No silent wrong answers: each case of what a new user threw at molgen, end to end through the CLI
with the bundled model. Every one of these gave a wrong answer or a confusing message before."""

import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import pandas as pd
import pytest
from typer.testing import CliRunner

import molgen
from molgen.checkpoint import BUNDLED
from molgen.cli import app

runner = CliRunner()
# score and filter run the model, check runs RDKit alone: the same reading rules apply to all three.
COMMANDS = {
    "score": ["score", "--workers", "1"],
    "filter": ["filter", "--workers", "1", "--keep-failed", "--min-percentile", "0"],
    "check": ["check"],
}


def run(command: str, source, out, *extra):
    name, *options = COMMANDS[command]
    return runner.invoke(app, [name, str(source), "-o", str(out), *options, *extra])


def read_output(out) -> pd.DataFrame:
    raw = out.read_bytes()
    raw.decode("utf-8")  # strict: an output holds only valid text
    assert b"\x00" not in raw and "\ufffd".encode() not in raw
    return pd.read_csv(out, dtype=str, keep_default_na=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_undecodable_bytes_before_a_smiles_are_not_methane(command, tmp_path):
    source = tmp_path / "in.smi"
    source.write_bytes(b"\xff\xfe\x00C garbage\nCCO ethanol\n")
    out = tmp_path / "out.csv"
    result = run(command, source, out)
    assert result.exit_code == 0, result.output
    rows = read_output(out)
    assert rows["status"].tolist() == ["invalid_smiles", "ok"]
    assert "not valid UTF-8" in rows["reason"][0]
    assert rows["smiles"][0] == "\\xff\\xfe\\x00C" and rows["name"][0] == "garbage"  # shown, escaped
    if command == "filter":
        assert rows["passed"].tolist() == ["False", "True"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_cell_with_whitespace_inside_is_not_one_smiles(command, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('smiles,name\n"C\tC",tab\n"C C",space\n  CCO ,padded\n')
    out = tmp_path / "out.csv"
    result = run(command, source, out)
    assert result.exit_code == 0, result.output
    rows = read_output(out)
    assert rows["status"].tolist() == ["invalid_smiles", "invalid_smiles", "ok"]  # blanks around a cell are fine
    assert all("a cell holds one SMILES" in reason for reason in rows["reason"][:2])


def test_the_api_applies_the_same_rule():
    scored = molgen.load().score(["C\tC", "\x00C", "CCO", "CC\u00a0"])
    assert scored["status"].tolist() == ["invalid_smiles", "invalid_smiles", "ok", "invalid_smiles"]
    assert "control character U+0000" in scored["reason"][1] and "whitespace inside" in scored["reason"][3]
    assert "non-ASCII character 'é'" in molgen.load().score(["CCé"])["reason"][0]


def flip_bytes_inside_tensors(source, target, count=400):
    """A copy of ``source`` with ``count`` bytes flipped inside its largest tensor's stored data."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    assert largest.compress_type == zipfile.ZIP_STORED and "/data/" in largest.filename
    start = largest.header_offset + 30 + len(largest.filename.encode()) + len(largest.extra)
    for position in random.Random(0).sample(range(largest.file_size), count):
        data[start + position] ^= 0xFF
    target.write_bytes(bytes(data))


def broken_checkpoints(tmp_path) -> dict:
    flipped = tmp_path / "flipped.pt"
    flip_bytes_inside_tensors(BUNDLED, flipped)
    cases = {"flipped": flipped}
    for name, content in {
        "truncated": BUNDLED.read_bytes()[: BUNDLED.stat().st_size // 2],
        "random": random.Random(1).randbytes(4096),
        "empty": b"",
    }.items():
        cases[name] = tmp_path / f"{name}.pt"
        cases[name].write_bytes(content)
    return cases


def test_broken_checkpoints_are_refused_in_one_sentence_with_exit_2(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("smiles\nCCO\n")
    expected = {"flipped": "is damaged: its contents no longer match the digest",
                "truncated": "not a PyTorch file, or truncated", "random": "not a PyTorch file, or truncated",
                "empty": "is empty (0 bytes)"}
    for name, checkpoint in broken_checkpoints(tmp_path).items():
        for arguments in (["score", str(source), "-o", str(tmp_path / "o.csv"), "--checkpoint", str(checkpoint)],
                          ["info", str(checkpoint)]):
            result = runner.invoke(app, arguments)
            message = " ".join(result.output.split())
            assert result.exit_code == 2, (name, result.output)
            assert expected[name] in message, (name, message)
            assert "weights_only" not in message and "Traceback" not in message
        assert not (tmp_path / "o.csv").exists()


def test_the_bundled_checkpoint_carries_a_digest_that_load_checks():
    model = molgen.load()
    assert model.loaded.digest and len(model.loaded.digest) == 64


def descendants(pid: int) -> list[int]:
    """Processes whose parent chain leads to ``pid`` (read from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_kill_9_of_score_leaves_no_worker_behind(tmp_path):
    source = tmp_path / "in.csv"
    pd.DataFrame({"smiles": ["CCO", "OC1CC1", "CC(=O)O", "C#N", "NCC(=O)O"] * 20_000}).to_csv(source, index=False)
    process = subprocess.Popen([sys.executable, "-m", "molgen", "score", str(source), "-o", str(tmp_path / "o.csv"),
                                "--workers", "2", "--chunk-size", "2000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2 and process.poll() is None:
        workers = descendants(process.pid)
        time.sleep(0.1)
    assert len(workers) >= 2, "the run ended before its workers started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], "workers outlived their parent by more than 5 seconds"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_byte_order_mark_before_the_header_is_not_part_of_the_column_name(command, tmp_path):
    source = tmp_path / "excel.csv"
    source.write_bytes("\ufeffsmiles,name\nCCO,ethanol\n".encode())
    out = tmp_path / "out.csv"
    result = run(command, source, out)
    assert result.exit_code == 0, result.output
    assert list(read_output(out).columns[:2]) == ["smiles", "name"]


@pytest.mark.parametrize("command", COMMANDS)
def test_header_only_input_writes_a_header_only_output(command, tmp_path):
    source = tmp_path / "header.csv"
    source.write_text("id,smiles\n")
    out = tmp_path / "out.csv"
    result = run(command, source, out)
    assert result.exit_code == 0, result.output
    rows = read_output(out)
    assert len(rows) == 0 and list(rows.columns[:3]) == ["id", "smiles", "log_density" if command != "check" else "status"]
    assert "status" in rows.columns


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_input_and_directories_get_a_clear_message(command, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = run(command, empty, tmp_path / "out.csv")
    assert result.exit_code == 2 and "empty.csv is empty" in result.output and "one of:" not in result.output
    folder = tmp_path / "shards.csv"
    folder.mkdir()
    result = run(command, folder, tmp_path / "out.csv")
    assert result.exit_code == 2 and "is a directory" in result.output and "does not exist" not in result.output
    assert not (tmp_path / "out.csv").exists()


def test_api_finds_the_smiles_column_as_the_cli_does():
    frame = pd.DataFrame({"id": [1, 2], "SMILES": ["CCO", "C1CC"]})
    scored = molgen.load().score(frame)
    assert scored["status"].tolist() == ["ok", "invalid_smiles"]
    with pytest.raises(ValueError, match="no SMILES column found"):
        molgen.load().score(pd.DataFrame({"structure": ["CCO"]}))


def test_filter_frame_on_a_scored_frame_adds_no_duplicate_columns():
    model = molgen.load()
    scored = model.score(pd.DataFrame({"smiles": ["CCO", "OC1CC1", "bad("]}))
    filtered = molgen.filter_frame(scored, model, min_percentile=0, props=("mw>=50",))
    assert not [c for c in filtered.columns if c.endswith("_molgen")]
    assert filtered.columns.is_unique
    assert filtered["passed"].tolist() == [False, True, False]
    again = molgen.filter_frame(filtered, model, min_percentile=0, props=("mw>=50",))
    assert list(again.columns) == list(filtered.columns)
    own = pd.DataFrame({"smiles": ["CCO"], "status": ["synthesised"]})  # a user's column is kept
    assert model.score(own)[["status", "status_molgen"]].values.tolist() == [["synthesised", "ok"]]


def test_help_at_80_columns_keeps_every_option_name_whole():
    for command in ("generate", "score", "filter", "check", "evaluate", "train", "distill", "repair"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"},
                               terminal_width=80)
        assert result.exit_code == 0
        assert "…" not in result.output, (command, [line for line in result.output.splitlines() if "…" in line])
    generate = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "80"}, terminal_width=80).output
    assert "--corrector-steps" in generate


def test_info_takes_its_checkpoint_as_distill_does(tmp_path):
    result = runner.invoke(app, ["info", str(BUNDLED)])
    assert result.exit_code == 0 and "content digest" in result.output
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(BUNDLED.read_bytes()[:1000])
    result = runner.invoke(app, ["info", str(truncated)])
    assert result.exit_code == 2 and "unexpected extra argument" not in result.output
    assert "truncated" in result.output


def test_generate_summary_counts_checks_alone_and_both(tmp_path):
    out = tmp_path / "g.csv"
    result = runner.invoke(app, ["generate", "-n", "40", "--steps", "8", "-o", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    unique = frame[frame["unique"]]
    rows = {line.split("│")[1].strip(): int(line.split("│")[2].replace(",", ""))
            for line in result.output.splitlines() if line.count("│") >= 3 and line.split("│")[2].strip().isdigit()}
    assert rows["passed checks"] == int(unique["passed_checks"].sum())
    assert rows["passed density and checks"] == int((unique["passed_checks"] & unique["passed_density"]).sum())
    assert rows["passed density and checks"] == int(frame["rank"].notna().sum())

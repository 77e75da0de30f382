"""The Ray engine of score and filter, on a local Ray instance: the local engine's rows, every row
exactly once through a killed actor, and a resume that keeps the finished parts."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import example_molecules
from test_screen import MESSY
from typer.testing import CliRunner

from molgen.cli import app
from molgen.screen import FilterSpec

runner = CliRunner()


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray[data] is required under CI (the dev extra installs it)")
        pytest.skip("ray[data] not installed")
    return ray


def settled_parts(out, quiet_seconds: float = 3.0, limit_seconds: float = 60.0) -> dict:
    """The part files (name: mtime) once none has appeared or changed for ``quiet_seconds``: the actors
    of a killed driver finish the shard they have, later on a loaded machine (a fixed second was not
    enough beside a training job)."""
    deadline = time.time() + limit_seconds
    seen, since = None, time.time()
    while time.time() < deadline:
        now = {p.name: p.stat().st_mtime_ns for p in out.glob("_shards/*.json")}
        if now != seen:
            seen, since = now, time.time()
        elif time.time() - since >= quiet_seconds:
            break
        time.sleep(0.2)
    return seen


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_skips_the_written_parts(tiny_checkpoint, tmp_path):
    # First in the file: the command starts its own local Ray instance, before the module's is up.
    require_ray()
    source = tmp_path / "in.csv"
    pd.concat([example_molecules()] * 2).iloc[:1500].to_frame().to_csv(source, index=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "molgen", "score", str(source), "-o", str(out), "--checkpoint",
               str(tiny_checkpoint), "--engine", "ray", "--shard-rows", "100", "--chunk-size", "50", "--batch-size", "1"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None and len(list(out.glob("_shards/*.json"))) < 2:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("_shards/*.json")}
    assert 2 <= len(written) < 15 and not (out / "_manifest.json").exists()
    written = settled_parts(out)  # an actor may still finish the shard it had: it counts as written
    done = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"({len(written)} parts done before --resume)" in done.stdout and "1,500 rows" in done.stdout
    assert all((out / "_shards" / name).stat().st_mtime_ns == stamp for name, stamp in written.items())
    scored = ray_output(out)
    assert scored["row_id"].tolist() == list(range(1500)) and scored["status"].notna().all()


@pytest.fixture(scope="module")
def ray_instance():
    ray = require_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def local_output(tiny_checkpoint, source, out, *extra):
    result = runner.invoke(app, ["score", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--workers", "1", *extra])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, dtype=str, keep_default_na=False)


def ray_output(folder):
    from molgen.screen_ray import read_output

    frame = read_output(folder)
    assert frame["row_id"].tolist() == sorted(frame["row_id"])
    return frame


def test_ray_engine_gives_the_local_engines_rows(ray_instance, tiny_checkpoint, tmp_path):
    source = tmp_path / "messy.csv"
    source.write_bytes(MESSY + b"".join(f"{12 + i},{s},example\n".encode() for i, s in enumerate(example_molecules()[:40])))
    local = local_output(tiny_checkpoint, source, tmp_path / "local.csv", "--chunk-size", "4", "--versus", "null")
    folder = tmp_path / "scored"
    result = runner.invoke(app, ["score", str(source), "-o", str(folder), "--checkpoint", str(tiny_checkpoint),
                                 "--engine", "ray", "--actors", "2", "--shard-rows", "12", "--chunk-size", "4",
                                 "--part-format", "csv", "--versus", "null"])
    assert result.exit_code == 0, result.output
    assert "51 rows" in result.output and "(5 parts" in result.output
    scored = ray_output(folder)
    assert "log_ratio" in scored.columns
    assert scored["row_id"].tolist() == list(range(51))
    pd.testing.assert_frame_equal(scored.drop(columns="row_id").astype(str), local)
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["rows"] == manifest["written"] == 51
    assert [part["rows"] for part in manifest["parts"]] == [[0, 12], [12, 24], [24, 36], [36, 48], [48, 51]]
    assert sum(sum(part["statuses"].values()) for part in manifest["parts"]) == 51


def test_ray_filter_keeps_the_local_verdicts_and_row_ids_across_files(ray_instance, tiny_checkpoint, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    smiles = example_molecules()[:60].tolist() + ["C1CC", "CCCl"]
    pd.DataFrame({"smiles": smiles[:25]}).to_csv(folder / "a.csv", index=False)
    pd.DataFrame({"smiles": smiles[25:], "id": range(25, len(smiles))}).to_parquet(folder / "b.parquet")
    (folder / "notes.txt.bak").write_text("not a molecule file")
    out = tmp_path / "kept"
    result = runner.invoke(app, ["filter", str(folder), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                                 "--engine", "ray", "--shard-rows", "10", "--chunk-size", "5", "--keep-failed",
                                 "--min-percentile", "20"])
    assert result.exit_code == 0, result.output
    kept = ray_output(out)
    assert kept["row_id"].tolist() == list(range(len(smiles)))
    assert kept["smiles"].tolist() == smiles
    whole = tmp_path / "whole.csv"
    pd.DataFrame({"smiles": smiles}).to_csv(whole, index=False)
    local = runner.invoke(app, ["filter", str(whole), "-o", str(tmp_path / "whole_kept.csv"), "--checkpoint",
                                str(tiny_checkpoint), "--keep-failed", "--min-percentile", "20", "--workers", "1"])
    assert local.exit_code == 0, local.output
    expected = pd.read_csv(tmp_path / "whole_kept.csv", dtype=str, keep_default_na=False)
    assert kept["passed"].astype(str).tolist() == expected["passed"].tolist()
    assert kept["failed_checks"].fillna("").tolist() == expected["failed_checks"].tolist()
    assert "passed:" in result.output and f"of {len(smiles)}" in result.output


def test_a_killed_actor_loses_and_duplicates_no_row(ray_instance, tiny_checkpoint, tmp_path):
    from molgen.screen_ray import screen_ray

    source = tmp_path / "in.csv"
    pd.concat([example_molecules()] * 2).iloc[:1200].to_frame().to_csv(source, index=False)
    killed = []

    def kill_an_actor(summary):
        if not killed:  # the actor that sent the first record is by now on its next shard
            record = json.loads(next((tmp_path / "out" / "_shards").iterdir()).read_text())
            os.kill(record["pid"], signal.SIGKILL)
            killed.append(record["pid"])

    summary = screen_ray(source, tmp_path / "out", checkpoint=tiny_checkpoint, actors=2, shard_rows=100,
                         chunk_size=50, batch_size=1, on_shard=kill_an_actor)
    assert killed
    scored = ray_output(tmp_path / "out")
    assert scored["row_id"].tolist() == list(range(1200))
    assert summary.rows == summary.written == 1200 and summary.shards == 12
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_shards").iterdir()]
    assert sorted(r["number"] for r in records) == list(range(12))
    assert len({r["pid"] for r in records} - set(killed)) >= 2  # the killed actor was replaced
    assert not list((tmp_path / "out").glob(".part-*"))  # the killed attempt's own file is gone too


def test_resume_after_an_interrupted_run_keeps_the_finished_parts(ray_instance, tiny_checkpoint, tmp_path):
    from molgen.screen_ray import screen_ray

    source = tmp_path / "in.csv"
    example_molecules()[:300].to_frame().to_csv(source, index=False)
    out = tmp_path / "out"
    options = dict(checkpoint=tiny_checkpoint, actors=1, shard_rows=50, chunk_size=25,
                   filter_spec=FilterSpec(min_percentile=10))

    def interrupt(summary):
        raise KeyboardInterrupt  # the driver stops after its first finished shard

    with pytest.raises(KeyboardInterrupt):
        screen_ray(source, out, on_shard=interrupt, **options)
    assert not (out / "_manifest.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 1 <= len(finished) < 6
    summary = screen_ray(source, out, resume=True, **options)
    assert summary.shards_skipped_on_resume >= 1 and summary.rows == 300
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in finished.items())  # not recomputed
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == 300 and len(manifest["parts"]) == 6
    straight = screen_ray(source, tmp_path / "straight", **options)
    assert straight.passed == summary.passed and straight.removed_by == summary.removed_by
    pd.testing.assert_frame_equal(ray_output(out), ray_output(tmp_path / "straight"))

    with pytest.raises(ValueError, match="other options"):
        screen_ray(source, out, resume=True, **{**options, "filter_spec": FilterSpec(min_percentile=50)})


def test_a_ray_dataset_comes_back_with_the_columns_appended(ray_instance, tiny_checkpoint):
    import molgen
    from molgen.screen_ray import screen_ray

    frame = pd.DataFrame({"name": [f"m{i}" for i in range(30)], "SMILES": example_molecules()[:28].tolist() + ["C1CC", None]})
    screened = screen_ray(ray_instance.data.from_pandas(frame), checkpoint=tiny_checkpoint).to_pandas()
    screened = screened.set_index("name").loc[frame["name"]].reset_index()
    expected = molgen.load(tiny_checkpoint).score(frame)
    assert screened["status"].tolist() == expected["status"].tolist()
    assert screened["reason"].fillna("").tolist() == expected["reason"].fillna("").tolist()
    pd.testing.assert_series_equal(screened["log_density"].astype("float64"), expected["log_density"], check_names=False)


def test_usage_errors_of_the_ray_engine_are_one_line(ray_instance, tiny_checkpoint, tmp_path, monkeypatch):
    source = tmp_path / "in.csv"
    pd.DataFrame({"mol": ["CCO"]}).to_csv(source, index=False)
    base = ["score", str(source), "--checkpoint", str(tiny_checkpoint), "--engine", "ray"]
    result = runner.invoke(app, base + ["-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no SMILES column found" in result.output
    result = runner.invoke(app, ["score", str(tmp_path / "none*.csv"), "-o", str(tmp_path / "o"), "--engine", "ray"])
    assert result.exit_code == 2 and "no file matches" in result.output
    result = runner.invoke(app, base + ["-o", str(tmp_path / "o"), "--smiles-column", "mol", "--part-format", "xls"])
    assert result.exit_code == 2 and "unknown part format" in result.output
    result = runner.invoke(app, base + ["-o", str(tmp_path / "o"), "--smiles-column", "mol", "--device", "cuda"])
    assert result.exit_code == 2 and "--gpus-per-actor" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = runner.invoke(app, base + ["-o", str(tmp_path / "o"), "--smiles-column", "mol"])
    assert result.exit_code == 2 and "pip install 'molgen[ray]'" in result.output

"""Screening throughput and memory of `molgen score`, beside a plain RDKit parse-only pass.

    python benchmarks/screen.py [--repeats 3] [--moses-subset 200000] [--skip-full]
    python benchmarks/screen.py --engine ray --checkpoint CKPT --dist moses [--sizes 20000,80000]

``--engine ray``: prefixes of MOSES train scored by the Ray engine with 1 and 2 actors (one CPU
each, a local Ray instance started by each run) beside the local engine on both cores, each run its
own process timed end to end (Ray's start and the actors' model loading included). The per-actor
rate is the parts' rows over the actors' time on them (from the manifest): the figure to multiply
by a cluster's actor count. Peak memory per actor comes from the actors themselves (largest
resident set over the run), so its flatness across the prefix sizes is the claim "flat with file size".

Inputs: QM9 (134k rows, all in the model's domain: every row goes through the model) and MOSES
train (1.6M drug-like rows, nearly all out of the QM9 model's domain: parsing and domain checks),
as a 200k-row prefix and whole; then MOSES test (176k drug-like rows) under the bundled drug-like
model (`--dist moses`: every row through the model), whole and its first tenth, whose peak memory
beside the whole file's is the claim "flat with file size". Each `molgen score` run is its own process, timed end to end, its
peak resident memory (largest process, parser workers included) read by /usr/bin/time. The
reference is a single-process pass that only reads the same file in chunks and parses every SMILES
with RDKit. Medians over ``--repeats`` runs; the full MOSES file runs once for each (it takes minutes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from _common import SHARED_DATA, write_results

PARSE_ONLY = """
import sys, time
import pandas as pd
from rdkit import Chem, RDLogger
RDLogger.DisableLog("rdApp.*")
rows = 0
for chunk in pd.read_csv(sys.argv[1], chunksize=10000, dtype=str, keep_default_na=False):
    column = [c for c in chunk.columns if c.lower() == "smiles"][0]
    for smiles in chunk[column]:
        Chem.MolFromSmiles(smiles)
        rows += 1
print(rows)
"""


def timed(command: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MiB, largest process) of a command, via GNU time."""
    with tempfile.NamedTemporaryFile(suffix=".time") as report:
        start = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        return seconds, int(Path(report.name).read_text().split()[-1]) / 1024


def measure(path: Path, rows: int, repeats: int, workers: int, model: tuple[str, ...] = ()) -> dict:
    """``molgen score`` (with the ``model`` options) and the parse-only reference on ``path``; the rows
    per status of the last scoring run."""
    out = Path(tempfile.mkdtemp()) / "scored.csv.gz"
    score = [sys.executable, "-m", "molgen", "score", str(path), "-o", str(out), "--workers", str(workers), *model]
    parse = [sys.executable, "-c", PARSE_ONLY, str(path)]
    runs = {"molgen_score": [timed(score) for _ in range(repeats)], "rdkit_parse_only": [timed(parse) for _ in range(repeats)]}
    statuses = pd.read_csv(out, usecols=["status"])["status"].value_counts()
    result = {"rows": rows, "repeats": repeats, "model": list(model), "statuses": statuses.to_dict()}
    for name, values in runs.items():
        result[name] = {
            "rows_per_second": statistics.median(rows / s for s, _ in values),
            "peak_rss_mib": statistics.median(m for _, m in values),
            "runs": [{"seconds": s, "peak_rss_mib": m} for s, m in values],
        }
    return result


def ray_engine(args: argparse.Namespace) -> None:
    sizes = [int(size) for size in args.sizes.split(",")]
    with gzip.open(SHARED_DATA / "moses" / "train.csv.gz", "rt") as handle:
        lines = [next(handle) for _ in range(max(sizes) + 1)]
    folder = Path(tempfile.mkdtemp())
    model = [] if args.checkpoint is None else ["--checkpoint", args.checkpoint]
    model += [] if args.dist is None else ["--dist", args.dist]
    results, table = [], []
    for size in sizes:
        prefix = folder / f"moses_{size}.csv"
        prefix.write_text("".join(lines[: size + 1]))
        score = [sys.executable, "-m", "molgen", "score", str(prefix), *model, "--chunk-size", "5000"]
        runs = {"local engine, 2 cores": score + ["-o", str(folder / "local.csv"), "--workers", "2"]}
        for actors in (1, 2):
            runs[f"ray, {actors} actor{'s' * (actors > 1)} x 1 CPU"] = score + [
                "-o", str(folder / f"ray{actors}"), "--engine", "ray", "--actors", str(actors), "--cpus-per-actor", "1",
                "--shard-rows", str(args.shard_rows), "--part-format", "csv"]
        for name, command in runs.items():
            measured = [timed(command) for _ in range(args.repeats)]
            seconds = statistics.median(s for s, _ in measured)
            row = {"rows": size, "run": name, "seconds": seconds, "rows_per_second": size / seconds,
                   "driver_peak_rss_mib": statistics.median(m for _, m in measured)}
            if "ray" in name:
                manifest = json.loads((Path(command[command.index("-o") + 1]) / "_manifest.json").read_text())
                parts = manifest["parts"]
                assert manifest["rows"] == size and sum(sum(p["statuses"].values()) for p in parts) == size
                row["per_actor_rows_per_second"] = size / sum(p["seconds"] for p in parts)
                row["actor_peak_rss_mib"] = max(p["peak_rss_mib"] for p in parts)
                row["statuses"] = dict(sum((Counter(p["statuses"]) for p in parts), Counter()))
            results.append(row)
            table.append((f"{size:,}", name, f"{row['rows_per_second']:,.0f}",
                          f"{row['per_actor_rows_per_second']:,.0f}" if "ray" in name else "",
                          f"{row['actor_peak_rss_mib']:,.0f}" if "ray" in name else "", f"{row['driver_peak_rss_mib']:,.0f}"))
    write_results("screen_ray", {"checkpoint": args.checkpoint, "dist": args.dist, "shard_rows": args.shard_rows,
                                 "repeats": args.repeats, "results": results}, table,
                  ("MOSES rows", "run", "rows/s end to end", "rows/s per actor (its shards)", "peak MiB per actor",
                   "peak MiB driver"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, help="Runs per measurement (default 3; 1 with --engine ray).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--moses-subset", type=int, default=200_000)
    parser.add_argument("--skip-full", action="store_true", help="Leave out the full 1.6M-row MOSES file.")
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--checkpoint", help="--engine ray: the model (default: the bundled one).")
    parser.add_argument("--dist", help="--engine ray: the distribution to score against.")
    parser.add_argument("--sizes", default="20000,80000", help="--engine ray: MOSES prefix sizes.")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    args = parser.parse_args()
    if args.engine == "ray":
        args.repeats = args.repeats or 1
        ray_engine(args)
        return
    args.repeats = args.repeats or 3

    moses = SHARED_DATA / "moses" / "train.csv.gz"
    with gzip.open(moses, "rt") as handle:
        lines = handle.readlines()
    subset = Path(tempfile.mkdtemp()) / f"moses_{args.moses_subset}.csv"
    subset.write_text("".join(lines[: args.moses_subset + 1]))
    # The drug-like model on MOSES's test file, whole and a tenth of it: its rows go through the model.
    moses_test = SHARED_DATA / "moses" / "test.csv.gz"
    with gzip.open(moses_test, "rt") as handle:
        test_lines = handle.readlines()
    test_prefix = subset.with_name("moses_test_prefix.csv")
    test_prefix.write_text("".join(test_lines[: (len(test_lines) - 1) // 10 + 1]))
    drug_like = ("--dist", "moses")
    inputs = {
        "qm9 (134k, in domain)": (SHARED_DATA / "qm9.csv", 133_885, args.repeats, ()),
        f"moses prefix ({args.moses_subset // 1000}k)": (subset, args.moses_subset, args.repeats, ()),
        f"moses test, first tenth ({(len(test_lines) - 1) // 10 // 1000}k), --dist moses":
            (test_prefix, (len(test_lines) - 1) // 10, args.repeats, drug_like),
        f"moses test ({(len(test_lines) - 1) // 1000}k), --dist moses": (moses_test, len(test_lines) - 1, args.repeats,
                                                                       drug_like),
    }
    if not args.skip_full:
        inputs["moses train (1.6M)"] = (moses, len(lines) - 1, 1, ())
    del lines, test_lines
    results = {name: measure(path, rows, repeats, args.workers, model)
               for name, (path, rows, repeats, model) in inputs.items()}
    table = []
    for name, r in results.items():
        ok = r["statuses"].get("ok", 0) / r["rows"]
        table.append((name, "molgen score", f"{r['molgen_score']['rows_per_second']:,.0f}",
                      f"{r['molgen_score']['peak_rss_mib']:,.0f}", f"{100 * ok:.2f}%", r["repeats"]))
        table.append((name, "reference: RDKit parse only", f"{r['rdkit_parse_only']['rows_per_second']:,.0f}",
                      f"{r['rdkit_parse_only']['peak_rss_mib']:,.0f}", "", r["repeats"]))
    write_results("screen", {"workers": args.workers, "results": results}, table,
                  ("input", "pass", "rows/s (median)", "peak RSS MiB (median)", "status ok", "runs"))


if __name__ == "__main__":
    main()

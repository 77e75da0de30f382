"""Screening throughput and memory of `molgen score`, beside a plain RDKit parse-only pass.

    python benchmarks/screen.py [--repeats 3] [--moses-subset 200000] [--skip-full]

Inputs: QM9 (134k rows, all in the model's domain: every row goes through the model) and MOSES
train (1.6M drug-like rows, nearly all out of the QM9 model's domain: parsing and domain checks),
as a 200k-row prefix and whole. Each `molgen score` run is its own process, timed end to end, its
peak resident memory (largest process, parser workers included) read by /usr/bin/time. The
reference is a single-process pass that only reads the same file in chunks and parses every SMILES
with RDKit. Medians over ``--repeats`` runs; the full MOSES file runs once for each (it takes minutes).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def measure(path: Path, rows: int, repeats: int, workers: int) -> dict:
    out = Path(tempfile.mkdtemp()) / "scored.csv.gz"
    score = [sys.executable, "-m", "molgen", "score", str(path), "-o", str(out), "--workers", str(workers)]
    parse = [sys.executable, "-c", PARSE_ONLY, str(path)]
    runs = {"molgen_score": [timed(score) for _ in range(repeats)], "rdkit_parse_only": [timed(parse) for _ in range(repeats)]}
    result = {"rows": rows, "repeats": repeats}
    for name, values in runs.items():
        result[name] = {
            "rows_per_second": statistics.median(rows / s for s, _ in values),
            "peak_rss_mib": statistics.median(m for _, m in values),
            "runs": [{"seconds": s, "peak_rss_mib": m} for s, m in values],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--moses-subset", type=int, default=200_000)
    parser.add_argument("--skip-full", action="store_true", help="Leave out the full 1.6M-row MOSES file.")
    args = parser.parse_args()

    moses = SHARED_DATA / "moses" / "train.csv.gz"
    with gzip.open(moses, "rt") as handle:
        lines = handle.readlines()
    subset = Path(tempfile.mkdtemp()) / f"moses_{args.moses_subset}.csv"
    subset.write_text("".join(lines[: args.moses_subset + 1]))
    inputs = {
        "qm9 (134k, in domain)": (SHARED_DATA / "qm9.csv", 133_885, args.repeats),
        f"moses prefix ({args.moses_subset // 1000}k)": (subset, args.moses_subset, args.repeats),
    }
    if not args.skip_full:
        inputs["moses train (1.6M)"] = (moses, len(lines) - 1, 1)
    del lines
    results = {name: measure(path, rows, repeats, args.workers) for name, (path, rows, repeats) in inputs.items()}
    table = []
    for name, r in results.items():
        table.append((name, "molgen score", f"{r['molgen_score']['rows_per_second']:,.0f}",
                      f"{r['molgen_score']['peak_rss_mib']:,.0f}", r["repeats"]))
        table.append((name, "reference: RDKit parse only", f"{r['rdkit_parse_only']['rows_per_second']:,.0f}",
                      f"{r['rdkit_parse_only']['peak_rss_mib']:,.0f}", r["repeats"]))
    write_results("screen", {"workers": args.workers, "results": results}, table,
                  ("input", "pass", "rows/s (median)", "peak RSS MiB (median)", "runs"))


if __name__ == "__main__":
    main()

"""`molgen generate` and `molgen score` alone and beside CPU-bound jobs, per thread setting.

    python benchmarks/threads.py [--before DIR] [--repeats 3] [-n 300] [--rows 20000]

Each run is its own `molgen` process, timed end to end (start-up included). "Loaded" runs it beside
one busy Python loop per core, the shape of a shared machine where other jobs want every core. Rows:
the code of ``--before`` (a checkout of an earlier commit, run with ``PYTHONPATH``; molgen before
``--threads`` left torch's OpenMP threads spinning while idle), today's default (idle threads sleep),
and ``--threads 1``. The reference is the same command alone. Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED_DATA, write_results

BUSY_LOOP = "while True: pass"


def timed_rate(command: list[str], items: int, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="A checkout of the code to compare against.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-n", type=int, default=300, help="Molecules to generate per run.")
    parser.add_argument("--rows", type=int, default=20_000, help="QM9 rows to score per run.")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp())
    rows = (SHARED_DATA / "qm9.csv").read_text().splitlines()[: args.rows + 1]
    source = scratch / "qm9_rows.csv"
    source.write_text("\n".join(rows) + "\n")
    tasks = {
        "generate": (["generate", "-n", str(args.n), "--seed", "1", "-o", str(scratch / "g.csv")], args.n),
        "score": (["score", str(source), "-o", str(scratch / "s.csv")], args.rows),
    }
    settings = {"today's default (idle threads sleep)": ([], None), "--threads 1": (["--threads", "1"], None)}
    if args.before:
        settings = {"before (idle threads spin)": ([], str(args.before.resolve())), **settings}
    cores = os.cpu_count() or 1

    results: dict = {}
    for load in ("alone", f"beside {cores} busy jobs"):
        competitors = [] if load == "alone" else [subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
                                                  for _ in range(cores)]
        try:
            for setting, (extra, pythonpath) in settings.items():
                env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MOLGEN_THREADS")}
                if pythonpath:
                    env["PYTHONPATH"] = pythonpath
                for task, (command, items) in tasks.items():
                    rates = [timed_rate([sys.executable, "-m", "molgen", *command, *extra], items, env)
                             for _ in range(args.repeats)]
                    results.setdefault(task, {}).setdefault(setting, {})[load] = {
                        "median_per_s": statistics.median(rates), "runs_per_s": rates}
                    print(f"{task:8s} {setting:40s} {load:20s} {statistics.median(rates):9.1f}/s", flush=True)
        finally:
            for process in competitors:
                process.kill()

    table = []
    for task, by_setting in results.items():
        unit = "molecules/s" if task == "generate" else "rows/s"
        for setting, by_load in by_setting.items():
            alone, loaded = (by_load[load]["median_per_s"] for load in by_load)
            table.append((task, setting, f"{alone:,.1f} {unit}", f"{loaded:,.1f} {unit}", f"{loaded / alone:.2f}"))
    write_results("threads", {"n": args.n, "rows": args.rows, "repeats": args.repeats, "cores": cores,
                              "results": results},
                  table, ("task", "setting", "alone", f"beside {cores} busy jobs", "loaded / alone"))


if __name__ == "__main__":
    main()

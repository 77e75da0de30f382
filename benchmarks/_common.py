"""Shared bits of the benchmark scripts: where data lives, machine facts, writing results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MOLGEN_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    # "-dirty" marks a run of uncommitted code: the commit alone would not reproduce it.
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=REPO, capture_output=True,
                            text=True)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit.stdout.strip() or "unknown",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def median_rate(work: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Median items/s of ``work`` (which returns how many items it processed) over ``repeats``."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = work()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), rates


def write_results(name: str, payload: dict, table_rows: list[tuple], header: tuple) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table_rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def fcd_score(smiles_a: list[str], smiles_b: list[str]) -> float:
    """FCD with both sides as RDKit canonical SMILES (the published protocol): ChemNet reads the
    string, so a Kekulé test set against aromatic samples would measure spelling, not chemistry."""
    from molgen.evaluation.generation import canonicalize, fcd

    return fcd(*([s for s in canonicalize(side) if s is not None] for side in (smiles_a, smiles_b)))


def qm9_split() -> tuple[list[str], list[str]]:
    """(train, test) SMILES of the shared QM9 copy, test being the published split."""
    import pandas as pd

    qm9 = pd.read_csv(SHARED_DATA / "qm9.csv")["smiles"]
    test_rows = json.loads((SHARED_DATA / "qm9_test_idx.json").read_text())["test_idx"]
    return qm9.drop(index=test_rows).tolist(), qm9.iloc[test_rows].tolist()

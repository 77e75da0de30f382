"""``molgen check``: RDKit checks on a molecule file, no model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from molgen.cli import common
from molgen.io import DEFAULT_CHUNK_SIZE, TableWriter, read_molecules
from molgen.screen import check_file


def check(
    input: Path = common.input_argument(),
    output: Path = common.output_option(),
    smiles_column: Optional[str] = common.smiles_column_option(),
    rule: List[str] = common.rule_option(),
    alerts: str = common.alerts_option(),
    prop: List[str] = common.prop_option(),
    workers: int = common.workers_option(1),
    chunk_size: int = typer.Option(DEFAULT_CHUNK_SIZE, min=1, help="Rows per chunk."),
    strict: bool = common.strict_option(),
) -> None:
    """RDKit checks on a molecule file: every input column kept, results appended, a status per row."""
    config = common.check_config(rule, alerts, prop)
    with common.exit_codes():
        read_molecules(input, smiles_column, 1)  # fail on a missing file or column before any work
        TableWriter(output)  # and on an output format that cannot be written
    started = time.perf_counter()
    with common.exit_codes():
        summary = common.streamed("checking", lambda on_chunk: check_file(
            input, output, config, smiles_column, chunk_size, workers, strict, on_chunk))
    elapsed = time.perf_counter() - started
    out = Console()
    out.print(f"molgen check: {input} -> {output}", highlight=False, soft_wrap=True)
    table = common.counts_table("rows", [("read", summary.rows)]
                                + [(f"status {name}", count) for name, count in sorted(summary.statuses.items())]
                                + [(f"failed {name}", count) for name, count in summary.removed_by.most_common()]
                                + [("passed all checks", summary.passed)])
    table.add_row("time", f"{elapsed:.1f} s ({summary.rows / max(elapsed, 1e-9):,.0f} rows/s)")
    out.print(table)

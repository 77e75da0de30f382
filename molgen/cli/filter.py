"""``molgen filter``: score plus RDKit checks; the rows that pass (every row with --keep-failed)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from molgen.cli import common
from molgen.cli.score import screen
from molgen.scoring import DEFAULT_MIN_PERCENTILE
from molgen.screen import FilterSpec


def filter_command(
    input: Path = common.input_argument(common.SCREEN_INPUT),
    output: Path = common.output_option(),
    min_percentile: float = typer.Option(
        DEFAULT_MIN_PERCENTILE, min=0.0, max=100.0, help="Keep rows at or above this density percentile (0: no "
        "density filter; a checkpoint without calibration fails every threshold above 0)."
    ),
    rule: List[str] = common.rule_option(()),
    alerts: str = common.alerts_option(()),
    prop: List[str] = common.prop_option("mw<=300"),
    keep_failed: bool = typer.Option(False, help="Write every row, with passed and failed_checks."),
    smiles_column: Optional[str] = common.smiles_column_option(),
    checkpoint: Optional[Path] = common.checkpoint_option(),
    batch_size: int = typer.Option(2048, min=1, help="Molecules per model call."),
    workers: int = common.workers_option(2, "Processes parsing with RDKit while the model scores."),
    chunk_size: int = typer.Option(10_000, min=1, help="Rows per chunk (memory stays flat)."),
    strict: bool = common.strict_option(),
    resume: bool = typer.Option(False, help="Continue an interrupted run (same options) from OUTPUT.partial."),
    device: str = common.device_option(),
    distribution: Optional[str] = common.distribution_option("Training distribution to score against ('null' = generic)."),
    threads: Optional[int] = common.threads_option(),
    engine: str = common.engine_option(),
    address: Optional[str] = common.address_option(),
    actors: int = common.actors_option(),
    cpus_per_actor: float = common.cpus_per_actor_option(),
    gpus_per_actor: float = common.gpus_per_actor_option(),
    shard_rows: int = common.shard_rows_option(),
    part_format: str = common.part_format_option(),
) -> None:
    """Score plus RDKit checks; write the rows that pass (all rows with --keep-failed)."""
    spec = FilterSpec(min_percentile=min_percentile, checks=common.check_config(rule, alerts, prop))
    on = common.EngineOptions(engine, address, actors, cpus_per_actor, gpus_per_actor, shard_rows, part_format)
    summary = screen(input, output, checkpoint, smiles_column, False, batch_size, workers, chunk_size, strict,
                     resume, device, threads, distribution, spec, keep_failed, on)
    out = Console()
    for name, count in summary.removed_by.most_common():
        out.print(f"  removed by {name}: {count:,}", highlight=False)
    out.print(f"  passed: {summary.passed:,} of {summary.rows:,}", highlight=False)

"""What the commands share: the one mapping from errors to exit codes, option builders, progress bars.

Exit codes: 0 success, 2 usage error (bad option, unreadable input or checkpoint, unknown column or
check), 1 failure of a run that started (``--strict`` met a bad row, a file broke mid-read, the disk
filled). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from molgen.checks import DEFAULT_ALERTS, DEFAULT_RULES, RULES, CheckConfig
from molgen.screen import ScreenSummary, StrictFailure
from molgen.workers import set_threads

console = Console(stderr=True)

# The one mapping, first match wins: ParserError is a ValueError and FileNotFoundError an OSError.
EXIT_CODES: list[tuple[tuple[type[BaseException], ...], int]] = [
    ((StrictFailure, pd.errors.ParserError), 1),
    ((FileNotFoundError, IsADirectoryError, ValueError), 2),  # InputError, CheckSpecError, CheckpointError too
    ((OSError,), 1),
    ((KeyError,), 2),
]


def fail(message: str, code: int) -> typer.Exit:
    # Escaped: messages quote SMILES and commands, whose brackets are not markup ([Na+], molgen[ray]).
    console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def exit_codes(interrupted: str | None = None) -> Iterator[None]:
    """Run a command's body: a known error becomes its one-line message and exit code. With
    ``interrupted``, Ctrl-C says that (exit 1) instead of stopping with a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        raise fail(interrupted, 1) from None
    except Exception as error:
        for types, code in EXIT_CODES:
            if isinstance(error, types):
                message = f"KeyError: {error}" if isinstance(error, KeyError) else str(error).strip()
                raise fail(message, code) from None
        raise


def compute_on(device: str, threads: int | None) -> None:
    """Exit with a one-line message when ``device`` names CUDA on a machine without it; set the CPU
    threads."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise fail(f"--device {device} requested but CUDA is not available", 2)
    set_threads(threads)


def check_config(rule: list[str], alerts: str, prop: list[str]) -> CheckConfig:
    with exit_codes():
        return CheckConfig.from_strings(rule, [alerts] if alerts else [], prop)


# Option builders: each command gets a fresh declaration (Typer reads them, they hold no state).
def input_argument(help: str = "CSV/TSV, .smi, SDF or Parquet file (optionally .gz).") -> Any:
    return typer.Argument(..., help=help)


SCREEN_INPUT = ("CSV/TSV, .smi, SDF or Parquet file (optionally .gz); with --engine ray also a folder or a "
                "quoted glob of them.")


@dataclass
class EngineOptions:
    """Where ``score`` and ``filter`` run: this machine, or a Ray cluster (``molgen.screen_ray``)."""

    engine: str
    address: str | None
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    shard_rows: int
    part_format: str


# The Ray engine's options (--engine ray).
def engine_option() -> Any:
    return typer.Option("local", help="local: this machine; ray: a Ray cluster, OUTPUT then a folder of parts "
                        "plus a manifest (pip install 'molgen[ray]').")


def address_option() -> Any:
    return typer.Option(None, help="Ray cluster: 'auto' (the one this machine belongs to) or 'ray://host:10001'; "
                        "default: a local instance.")


def actors_option() -> Any:
    return typer.Option(1, min=1, help="Ray actors (each loads the model once).")


def cpus_per_actor_option() -> Any:
    return typer.Option(1.0, min=0.1, help="CPUs per Ray actor (its torch threads).")


def gpus_per_actor_option() -> Any:
    return typer.Option(0.0, min=0.0, help="GPUs per Ray actor (the model then runs on CUDA).")


def shard_rows_option() -> Any:
    return typer.Option(100_000, min=1, help="Rows per Ray shard: one task, one part file.")


def part_format_option() -> Any:
    return typer.Option("parquet", help="Ray part files: parquet, csv, csv.gz or tsv.")


def output_option(help: str = "Output .csv/.tsv (optionally .gz) or .parquet.") -> Any:
    return typer.Option(..., "--output", "-o", help=help)


def in_place_output_option() -> Any:
    return typer.Option(None, "--output", "-o", help="Where to write (default: in place).")


def smiles_column_option() -> Any:
    return typer.Option(None, help="SMILES column (default: a column named smiles, in any case).")


def checkpoint_option() -> Any:
    return typer.Option(None, help="Checkpoint (default: the bundled QM9 model).")


def qm9_path_option() -> Any:
    return typer.Option(None, "--qm9-path", help="Folder or qm9.csv with qm9_test_idx.json beside it.")


def trained_on_option() -> Any:
    return typer.Option(["qm9"], "--data", help="The training sets it was trained on, as for train.")


def device_option(help: str = "cpu, cuda, cuda:1, ...") -> Any:
    return typer.Option("cpu", help=help)


def threads_option() -> Any:
    return typer.Option(
        None, "--threads", envvar="MOLGEN_THREADS", min=1, show_default="every core",
        help="CPU threads for the model. Idle threads sleep rather than spin, so a run shares a busy machine fairly.",
    )


def workers_option(default: int = 2, help: str = "Worker processes for RDKit.") -> Any:
    return typer.Option(default, min=1, help=help)


def distribution_option(help: str = "Training distribution to use ('null' = generic).") -> Any:
    return typer.Option(None, "--dist", "--distribution", help=f"{help} Default: the checkpoint's first.")


def rule_option(default: Sequence[str] = DEFAULT_RULES) -> Any:
    return typer.Option(list(default), help=f"Rule sets: {', '.join(RULES)}.")


def alerts_option(default: Sequence[str] = DEFAULT_ALERTS) -> Any:
    return typer.Option(",".join(default), help="Structural alert sets, comma-separated ('' for none), e.g. pains,brenk.")


def prop_option(example: str = "qed>=0.5") -> Any:
    return typer.Option([], "--prop", help=f"Property window, e.g. '{example}' (repeatable).")


def aromatic_bonds_option() -> Any:
    return typer.Option(
        False, help="Keep aromatic bonds as their own bond type (and [nH]-style atom types) instead of kekulizing."
    )


def strict_option() -> Any:
    return typer.Option(False, help="Stop at the first row that is not ok (exit 1).")


def rows_progress() -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} rows"),
        TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=True,
    )


def streamed(description: str, run: Callable[[Callable[[ScreenSummary], None]], ScreenSummary]) -> ScreenSummary:
    """``run(on_chunk)`` under a progress bar of rows and rows/s (rows done before a resume not counted)."""
    started = time.perf_counter()
    with rows_progress() as progress:
        task = progress.add_task(description, rate="")

        def on_chunk(summary: ScreenSummary) -> None:
            rate = (summary.rows - summary.skipped_on_resume) / (time.perf_counter() - started)
            progress.update(task, completed=summary.rows, rate=f"{rate:,.0f} rows/s")

        return run(on_chunk)


def counts_table(header: str, rows: list[tuple[str, int]]) -> Table:
    table = Table()
    table.add_column("")
    table.add_column(header, justify="right")
    for label, count in rows:
        table.add_row(label, f"{count:,}")
    return table

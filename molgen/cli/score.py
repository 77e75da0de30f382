"""``molgen score``: log_density, density_percentile, status and reason appended to every row; and the
streaming run that ``filter`` shares with it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from molgen.checkpoint import BUNDLED, bundled_models, load_model, model_path
from molgen.cli import common
from molgen.io import read_molecules
from molgen.scoring import Scorer
from molgen.screen import FilterSpec, ScreenSummary, screen_file


def score(
    input: Path = common.input_argument(common.SCREEN_INPUT),
    output: Path = common.output_option(),
    smiles_column: Optional[str] = common.smiles_column_option(),
    checkpoint: Optional[Path] = common.checkpoint_option(),
    exact: bool = typer.Option(False, help="Also the ELBO (a lower bound on log P, nats) and its standard error: slower."),
    batch_size: int = typer.Option(2048, min=1, help="Molecules per model call."),
    workers: int = common.workers_option(2, "Processes parsing with RDKit while the model scores."),
    chunk_size: int = typer.Option(10_000, min=1, help="Rows per chunk (memory stays flat)."),
    strict: bool = common.strict_option(),
    resume: bool = typer.Option(False, help="Continue an interrupted run (same options) from OUTPUT.partial."),
    device: str = common.device_option(),
    distribution: Optional[str] = common.distribution_option("Training distribution to score against ('null' = generic)."),
    versus: Optional[str] = typer.Option(
        None, help="Also log_ratio: log_density under --dist minus under this distribution (e.g. null), how much more "
        "typical of --dist a molecule is than of molecules in general. Tells an adapted series' molecules from "
        "other drug-like ones where log_density (which favours small, simple molecules) cannot."),
    threads: Optional[int] = common.threads_option(),
    engine: str = common.engine_option(),
    address: Optional[str] = common.address_option(),
    actors: int = common.actors_option(),
    cpus_per_actor: float = common.cpus_per_actor_option(),
    gpus_per_actor: float = common.gpus_per_actor_option(),
    shard_rows: int = common.shard_rows_option(),
    part_format: str = common.part_format_option(),
) -> None:
    """Append log_density, density_percentile, status and reason to every row of a molecule file (and
    log_ratio with --versus)."""
    on = common.EngineOptions(engine, address, actors, cpus_per_actor, gpus_per_actor, shard_rows, part_format)
    screen(input, output, checkpoint, smiles_column, exact, batch_size, workers, chunk_size, strict, resume,
           device, threads, distribution, None, False, on, versus)


def screen(
    input: Path, output: Path, checkpoint: Optional[Path], smiles_column: Optional[str], exact: bool,
    batch_size: int, workers: int, chunk_size: int, strict: bool, resume: bool, device: str, threads: Optional[int],
    distribution: Optional[str], filter_spec: Optional[FilterSpec], keep_failed: bool, on: common.EngineOptions,
    versus: Optional[str] = None,
) -> ScreenSummary:
    """The run of ``score`` and ``filter``: a progress bar of rows, then the rows per status."""
    if on.engine not in {"local", "ray"}:
        raise common.fail(f"--engine {on.engine!r}: use local or ray", 2)
    with common.exit_codes():
        checkpoint = model_path(checkpoint, distribution)
    if on.engine == "ray":
        if device != "cpu":
            raise common.fail("with --engine ray the actors hold the devices: give --gpus-per-actor, not --device", 2)
        return screen_on_ray(input, output, checkpoint, smiles_column, exact, batch_size, chunk_size, strict, resume,
                             distribution, filter_spec, keep_failed, on, versus)
    common.compute_on(device, threads)
    with common.exit_codes():
        scorer = Scorer(load_model(checkpoint, device=device), distribution, device, batch_size, exact, versus=versus)
        read_molecules(input, smiles_column, 1)  # fail on a missing file or column before any work
    started = time.perf_counter()
    with common.exit_codes(f"interrupted; continue with the same command and --resume ({output}.partial kept)"):
        summary = common.streamed("scoring" if filter_spec is None else "filtering", lambda on_chunk: screen_file(
            input, output, scorer, smiles_column, chunk_size, workers, strict, resume, filter_spec, keep_failed,
            on_chunk))
    report(f"{input} -> {output}", summary, started, f"{summary.skipped_on_resume:,} done before --resume",
           checkpoint=checkpoint)
    return summary


def report(what: str, summary: ScreenSummary, started: float, resumed: str, engine: str = "",
           checkpoint: Optional[Path] = None) -> None:
    """The closing lines: rows, rows done before a resume, rate of this run; then rows per status, and
    where the default model found rows out of its domain, the bundled model that takes drug-like ones."""
    seconds = time.perf_counter() - started
    new_rows = summary.rows - summary.skipped_on_resume
    out = Console()
    out.print(f"{what}: {summary.rows:,} rows" + (f" ({resumed})" if summary.skipped_on_resume else "")
              + f"; {new_rows:,} in {seconds:.1f} s ({new_rows / max(seconds, 1e-9):,.0f} rows/s{engine})",
              highlight=False, soft_wrap=True)
    for name, count in sorted(summary.statuses.items()):
        out.print(f"  status {name}: {count:,}", highlight=False)
    if summary.statuses.get("out_of_domain") and checkpoint == BUNDLED and "qm9_moses" in bundled_models():
        out.print("  the default model takes QM9's molecules (at most 9 heavy atoms of C, N, O, F); drug-like "
                  "molecules score under the bundled drug-like model: add --dist moses", highlight=False)


def screen_on_ray(
    input: Path, output: Path, checkpoint: Optional[Path], smiles_column: Optional[str], exact: bool,
    batch_size: int, chunk_size: int, strict: bool, resume: bool, distribution: Optional[str],
    filter_spec: Optional[FilterSpec], keep_failed: bool, on: common.EngineOptions, versus: Optional[str] = None,
) -> ScreenSummary:
    """``--engine ray``: the shards on a Ray actor pool under the same progress bar; then the rows per
    status and where the parts and manifest are."""
    from molgen.screen_ray import MANIFEST, connect, screen_ray

    with common.exit_codes():
        connect(on.address, quiet=True)
    started = time.perf_counter()
    with common.exit_codes(f"interrupted; continue with the same command and --resume (finished parts in {output} kept)"):
        summary = common.streamed("scoring" if filter_spec is None else "filtering", lambda on_chunk: screen_ray(
            str(input), output, checkpoint=checkpoint, distribution=distribution, versus=versus,
            smiles_column=smiles_column,
            filter_spec=filter_spec, keep_failed=keep_failed, exact=exact, strict=strict, actors=on.actors,
            cpus_per_actor=on.cpus_per_actor, gpus_per_actor=on.gpus_per_actor, batch_size=batch_size,
            chunk_size=chunk_size, shard_rows=on.shard_rows, part_format=on.part_format, resume=resume,
            address=on.address, on_shard=on_chunk))
    report(f"{input} -> {output}/ ({summary.shards} parts, {output / MANIFEST})", summary, started,
           f"{summary.shards_skipped_on_resume} parts done before --resume", f", {on.actors} actor{'s' * (on.actors > 1)}",
           checkpoint)
    return summary

"""``molgen adapt``: a user's molecule set becomes a new distribution of a trained model, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from molgen.cli import common
from molgen.training.adapt import AdaptConfig


def adapt(
    input: Path = common.input_argument(),
    output: Path = typer.Option(..., "--output", "-o", help="The adapter file to write (small: embedding and adapters)."),
    base: Optional[Path] = typer.Option(None, help="The model to extend (default: the bundled one)."),
    name: Optional[str] = typer.Option(None, help="The new distribution's name (default: the output file's stem)."),
    smiles_column: Optional[str] = common.smiles_column_option(),
    minutes: float = typer.Option(
        10.0, min=0.0, help="Time budget of the whole run: training stops in time for the density term and the "
        "held-out figures that follow it (their time estimated from one timed ELBO call)."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after this many steps (default: the time budget)."),
    rank: int = typer.Option(8, min=1, help="Rank of the low-rank adapters on each block's attention and feed-forward layers."),
    val_fraction: float = typer.Option(0.2, min=0.01, max=0.9, help="Share of the set held out for the figures and calibration."),
    batch_size: int = typer.Option(64, min=1),
    elbo_samples: int = typer.Option(
        AdaptConfig.elbo_samples, min=2, help="Noise levels per held-out ELBO of the NLL table (more: tighter, slower)."),
    check_molecules: int = typer.Option(
        AdaptConfig.check_molecules, min=2, help="Held-out molecules of the NLL table (calibration uses them all)."),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, help="Continue an interrupted run (same options) from OUTPUT.partial."),
    workers: int = common.workers_option(2, "Processes parsing with RDKit."),
    threads: Optional[int] = common.threads_option(),
) -> None:
    """Learn a new [DIST] embedding and low-rank adapters on a molecule file, the base model frozen."""
    from molgen.checkpoint import BUNDLED, BUNDLED_NAME, load_model
    from molgen.training.adapt import adapt_file

    common.compute_on("cpu", threads)
    work = Path(f"{output}.partial")
    with common.exit_codes():
        loaded = load_model(base)
    if not resume and work.exists():
        work.unlink()
    config = AdaptConfig(name=name or output.stem, rank=rank, minutes=minutes, max_steps=max_steps, batch_size=batch_size,
                         val_fraction=val_fraction, elbo_samples=elbo_samples, check_molecules=check_molecules,
                         seed=seed)
    base_name = BUNDLED_NAME if base is None or base.resolve() == BUNDLED else str(base)
    with common.exit_codes(f"interrupted; continue with the same command and --resume ({work} kept)"), \
            common.console.status("adapting") as status:
        card, _ = adapt_file(input, output, loaded, base_name, config, smiles_column, workers, work, status.update)
    work.unlink(missing_ok=True)
    out = Console()
    counts = ", ".join(f"{count:,} {status}" for status, count in card["molecules"]["statuses"].items())
    out.print(f"{input}: {counts}; trained on {card['molecules']['train']:,}, held out {card['molecules']['held_out']:,}; "
              f"{card['steps']:,} steps in {card['training_seconds'] / 60:.1f} min, figures in "
              f"{card['figures_seconds']['taken'] / 60:.1f} min -> {output} "
              f"({output.stat().st_size / 1e6:.2f} MB)", highlight=False, soft_wrap=True)
    if card["steps"] == 0:
        out.print(f"  no training step fitted in --minutes {minutes:g}: what follows training takes about "
                  f"{card['figures_seconds']['estimated'] / 60:.1f} min here, so the new distribution is the base's "
                  "null one with the set's sizes; give more minutes", highlight=False)
    table = Table(title="held-out NLL bound (nats/molecule)")
    table.add_column("distribution")
    table.add_column("NLL", justify="right")
    for label, figures in card["held_out"].items():
        table.add_row(label, f"{figures['nll_nats']:.2f} ± {figures['nll_stderr']:.2f}")
    out.print(table)

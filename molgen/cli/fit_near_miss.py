"""``molgen fit-near-miss``: give the density head its near-miss term, everything else frozen."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from molgen.cli import common
from molgen.cli.train import fit_on_training_data


def fit_near_miss(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (RUN/checkpoint.pt, or an export such as qm9.pt)."),
    data: List[str] = common.trained_on_option(),
    qm9_path: Optional[Path] = common.qm9_path_option(),
    output: Optional[Path] = common.in_place_output_option(),
    molecules: int = typer.Option(50_000, min=10, help="Training molecules: the positives."),
    mutants: int = typer.Option(50_000, min=10, help="Single-edit mutants of training molecules: the negatives."),
    epochs: int = typer.Option(100, min=1, help="Passes over them (the learning rate follows a cosine)."),
    minutes: Optional[float] = typer.Option(None, min=0.0, help="Stop earlier when this many minutes are spent."),
    check_molecules: int = typer.Option(1_000, min=10, help="Held-out molecules (and their mutants) to judge the fit on."),
    seed: int = typer.Option(0),
    device: str = common.device_option("cpu, cuda, cuda:1, ... (the result is written for CPU)."),
    workers: int = common.workers_option(2, "Worker processes for data preparation."),
    threads: Optional[int] = common.threads_option(),
) -> None:
    """Add log P(real | molecule) to the density head: a classifier on the same states, fit to tell the
    training molecules from single-edit near misses of them (which the ELBO the head learns ranks
    poorly); then recalibrate the percentiles. Sampling and the head's ELBO fit stay as they were."""
    from molgen.training.near_miss import NearMissConfig, fit_near_miss_checkpoint

    common.compute_on(device, threads)
    config = NearMissConfig(molecules=molecules, mutants=mutants, epochs=epochs, minutes=minutes,
                            check_molecules=check_molecules, seed=seed, device=device)
    report = fit_on_training_data(checkpoint, data, qm9_path, workers, "fitting the near-miss term",
                                  lambda training, log: fit_near_miss_checkpoint(checkpoint, training, config, output, log))
    Console().print(
        f"Near-miss term fit in {report['epochs']} epochs ({report['seconds']:.0f} s). AUROC of D against single-edit "
        f"mutants of {report['check_molecules']:,} held-out molecules: {report['auroc_vs_mutants_before']:.3f} -> "
        f"{report['auroc_vs_mutants_after']:.3f} (the term alone {report['auroc_vs_mutants_term']:.3f}); median term "
        f"{report['median_term_held_out_nats']:.2f} nats on held-out molecules, {report['median_term_mutants_nats']:.2f} "
        f"on mutants; written to {output or checkpoint}", highlight=False, soft_wrap=True)

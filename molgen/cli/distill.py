"""``molgen distill``: refit the density head onto low-variance ELBOs, backbone frozen."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from molgen.checkpoint import member_numbers
from molgen.cli import common
from molgen.cli.train import fit_on_training_data
from molgen.likelihood import MAX_ELBO_ROWS


def distill(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (RUN/checkpoint.pt)."),
    data: List[str] = common.trained_on_option(),
    qm9_path: Optional[Path] = common.qm9_path_option(),
    output: Optional[Path] = common.in_place_output_option(),
    molecules: int = typer.Option(20_000, min=2, help="Training molecules whose ELBO becomes a target."),
    elbo_samples: int = typer.Option(32, min=2, help="Noise levels per target ELBO."),
    epochs: int = typer.Option(600, min=1, help="Passes of the head over the targets."),
    huber_nats: float = typer.Option(
        2.0, min=0.0, help="Residuals past this many nats cost linearly, so the long tail of mutant ELBOs "
        "does not swamp the fit; 0 fits by least squares."),
    atom_terms: bool = typer.Option(
        True, help="Give the head per-atom terms summed over the atoms (the ELBO is such a sum); "
        "--no-atom-terms refits the [CLS] head alone."),
    batch_size: int = typer.Option(256, min=1, help="Targets per step of the head's fit."),
    elbo_rows: int = typer.Option(
        MAX_ELBO_ROWS, min=1, help="Molecules x noise levels per forward call of the ELBO: more keeps a GPU busy (65536)."),
    seed: int = typer.Option(0),
    device: str = common.device_option("cpu, cuda, cuda:1, ... (the result is written for CPU)."),
    workers: int = common.workers_option(2, "Worker processes for data preparation."),
    proposal_only: bool = typer.Option(
        False, help="Only re-estimate the ELBO's importance proposal over noise levels (80 s on a 2-core "
        "CPU for QM9) and keep the density head; prints the ELBO's spread under the old proposal and the new."),
    add_members: int = typer.Option(
        0, min=0, help="Keep the density head and fit this many more members of it on one set of fresh targets "
        "(other molecules and noise, the stored proposal), each from its own start; D becomes the members' mean, "
        "whose errors partly cancel. 0 refits the whole head."),
    fresh_head: bool = typer.Option(
        False, help="Start every member of the head afresh (D near the targets' running mean) "
        "instead of from the trained one: for a head that training left far from its ELBOs."),
    threads: Optional[int] = common.threads_option(),
) -> None:
    """Refit the density head onto low-variance ELBOs (backbone frozen) and recalibrate it."""
    from molgen.training.distill import DistillConfig, distill_checkpoint, refit_elbo_proposal

    common.compute_on(device, threads)
    config = DistillConfig(molecules=molecules, elbo_samples=elbo_samples, epochs=epochs, huber_nats=huber_nats,
                           atom_terms=atom_terms, batch_size=batch_size, elbo_rows=elbo_rows, seed=seed,
                           device=device, add_members=add_members, fresh_head=fresh_head)
    doing, fit = ("estimating the ELBO's importance proposal", refit_elbo_proposal) if proposal_only else (
        "distilling", distill_checkpoint)
    report = fit_on_training_data(checkpoint, data, qm9_path, workers, doing,
                                  lambda training, log: fit(checkpoint, training, config, output, log=log))
    if proposal_only:
        summary = (f"ELBO importance proposal re-estimated on {report['pilot_molecules']:,} training molecules: the "
                   f"{report['check_samples']}-level ELBO of {report['check_molecules']:,} held-out molecules varies "
                   f"by {report['elbo_sd_before']:.2f} -> {report['elbo_sd_after']:.2f} nats (SD)")
    else:
        summary = (f"Spearman(D, ELBO) on {report['check_molecules']} held-out molecules: "
                   f"{report['spearman_density_elbo_before']:.3f} -> {report['spearman_density_elbo_after']:.3f} "
                   f"(ELBO repeatability {report['check_elbo_repeatability']:.3f})")
        if add_members:
            summary += f", with {member_numbers(report['members'])} (alone: {report['spearman_new_members']:.3f})"
    Console().print(f"{summary}; written to {output or checkpoint}", highlight=False, soft_wrap=True)

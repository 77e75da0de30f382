"""``molgen repair``: fit the repair adapter, everything else frozen."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from molgen.cli import common
from molgen.cli.train import fit_on_training_data


def repair(
    checkpoint: Path = typer.Argument(..., help="A checkpoint trained with --kekule-features (RUN/checkpoint.pt)."),
    data: List[str] = common.trained_on_option(),
    qm9_path: Optional[Path] = common.qm9_path_option(),
    output: Optional[Path] = common.in_place_output_option(),
    width: int = typer.Option(256, min=1, help="Hidden width of the adapter's MLP."),
    pair_width: int = typer.Option(
        0, min=0, help="Hidden width of a pair side of the adapter, acting on bonds under the same gate (0: none). "
        "The bundled adapter's is 128 (raw validity 97.4%, the atom side alone 96.8%; a second fit under --seed 1: "
        "96.8%)."),
    steps: int = typer.Option(5000, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(192, min=2, help="Training molecules per step."),
    min_logsnr: float = typer.Option(
        -1.5, help="The adapter acts only at this log-SNR or above (less noise), where estimates can be molecules."),
    chains: int = typer.Option(
        0, min=0, help="Then fine-tune the adapter on the gated states of this many of its own sampler chains (0: "
        "none). More raw validity, less uniqueness; 40,000 take 20-36 minutes and 2-3.3 GB on a 2-core CPU."),
    chain_steps: int = typer.Option(2000, min=1, help="Optimizer steps of the fine-tune on the chains."),
    check_chains: int = typer.Option(2000, min=1, help="Fresh chains whose raw validity is reported before and after."),
    seed: int = typer.Option(0),
    workers: int = common.workers_option(2, "Worker processes for data preparation."),
) -> None:
    """Fit a repair adapter (everything else frozen) that acts only while the sampler's estimate is no molecule:
    on broken copies of training molecules, then (--chains) on the sampler's own chains."""
    from molgen.training.repair import RepairConfig, repair_checkpoint

    config = RepairConfig(width=width, pair_width=pair_width, steps=steps, batch_size=batch_size,
                          min_logsnr=min_logsnr, chains=chains, chain_steps=chain_steps, check_chains=check_chains,
                          seed=seed)
    report = fit_on_training_data(
        checkpoint, data, qm9_path, workers, "fitting the repair adapter",
        lambda training, log: repair_checkpoint(checkpoint, training, config, output, log=log))
    out = Console()
    out.print(
        f"repair adapter: of {report['check_gated']:,} held-out estimates that were no molecule, the next pass made "
        f"{100 * report['mended_after']:.1f}% molecules ({100 * report['mended_before']:.1f}% without it); "
        f"{steps:,} steps; written to {output or checkpoint}",
        highlight=False, soft_wrap=True,
    )
    own = report.get("own_chains")
    if own:
        out.print(
            f"fine-tuned on {own['gated_states']:,} gated states of {own['chains']:,} of its own chains: raw validity of "
            f"{own['check_chains']:,} fresh chains {100 * own['raw_validity_before']:.1f}% -> "
            f"{100 * own['raw_validity_after']:.1f}%", highlight=False, soft_wrap=True)

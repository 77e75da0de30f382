"""``molgen export``: the inference part of a training checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from molgen.checkpoint import export_inference
from molgen.cli import common


def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (RUN/checkpoint.pt)."),
    output: Path = common.output_option("Inference checkpoint to write."),
    half: bool = typer.Option(False, help="Store the weights as float16 (half the size)."),
    evaluation: Optional[Path] = typer.Option(
        None, help="A `molgen evaluate` report of this checkpoint: its headline figures go into the card."
    ),
) -> None:
    """Write the inference part of a training checkpoint: EMA weights and the plain-value card."""
    from molgen.evaluation.report import headline_figures

    with common.exit_codes():
        figures = headline_figures(json.loads(evaluation.read_text())) if evaluation else None
        export_inference(checkpoint, output, half, evaluation=figures)
    Console().print(f"{output}: {output.stat().st_size / 2**20:.1f} MiB", highlight=False)

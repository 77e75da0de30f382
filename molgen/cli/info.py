"""``molgen info``: a checkpoint's card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from molgen.checkpoint import BUNDLED, ModelCard, load_model
from molgen.cli import common


def info(
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint (default: the bundled QM9 model)."),
    checkpoint_option: Optional[Path] = typer.Option(None, "--checkpoint", hidden=True),  # the earlier spelling
) -> None:
    """Print a checkpoint's card: data, size, training, metrics."""
    checkpoint = checkpoint or checkpoint_option
    with common.exit_codes():
        card = ModelCard.of(load_model(checkpoint), str(checkpoint or BUNDLED.name))
    table = Table(title=f"molgen checkpoint {card.name}", show_header=False)
    table.add_column("", overflow="fold")  # long figure names wrap whole rather than lose their ends
    table.add_column("")
    for label, value in card.rows():
        table.add_row(label, value)
    Console().print(table)

"""``molgen data prepare``: encode a molecule source, split it, cache the tensors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from molgen.cli import common

data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True, rich_markup_mode=None)


@data_app.command("prepare")
def prepare(
    source: str = typer.Argument(
        "qm9", help="'qm9' (found via --qm9-path, $MOLGEN_QM9, the cache, or --download) or a molecule file."
    ),
    qm9_path: Optional[Path] = common.qm9_path_option(),
    test_idx: Optional[Path] = typer.Option(None, help="JSON of 0-based test rows (for a molecule file)."),
    smiles_column: Optional[str] = common.smiles_column_option(),
    max_atoms: Optional[int] = typer.Option(None, min=1, help="Largest molecule kept (default: the largest seen)."),
    val_fraction: float = typer.Option(0.05, min=0.0, max=0.5, help="Share of train carved out for validation."),
    seed: int = typer.Option(0, help="Seed of the validation carve-out."),
    workers: int = common.workers_option(2),
    download: bool = typer.Option(False, help="Download QM9 if it is not found locally."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Re-encode even if a cached copy exists."),
    aromatic_bonds: bool = common.aromatic_bonds_option(),
) -> None:
    """Read a molecule source, encode it, cache the tensors; print counts per status and split sizes."""
    from molgen.data import locate_qm9, prepare_dataset  # torch-geometric loads only for this command

    started = time.perf_counter()
    with common.exit_codes():
        if source == "qm9":
            files = locate_qm9(qm9_path, download=download)
            path, test_idx = files.csv, test_idx or files.test_idx
        else:
            path = Path(source)
        dataset, from_cache = prepare_dataset(
            path, test_idx, smiles_column, max_atoms=max_atoms, val_fraction=val_fraction, seed=seed, workers=workers,
            use_cache=not no_cache, aromatic_bonds=aromatic_bonds,
        )
    out = Console()
    action = "loaded from cache" if from_cache else "prepared"
    out.print(f"{path}: {action} in {time.perf_counter() - started:.1f} s", highlight=False, soft_wrap=True)
    out.print(common.counts_table("molecules", [(f"status {name}", count) for name, count in dataset.status_counts().items()]
                                  + [(f"split {name}", count) for name, count in dataset.split_sizes().items()]))
    out.print(f"vocabulary: {', '.join(dataset.vocab.labels)}; bonds {', '.join(dataset.vocab.bond_types[1:])}; "
              f"max atoms {dataset.vocab.max_atoms}", highlight=False)
    out.print(f"fingerprint {dataset.fingerprint}")
    if len(dataset.rejected):
        out.print("first rejected rows:")
        for row in dataset.rejected.head(5).itertuples():
            out.print(f"  row {row.row + 1}: {row.status}: {row.reason}", highlight=False)

"""The ``molgen`` command line (Typer).

Exit codes: 0 success, 2 usage error (bad option, unreadable input, unknown column or check),
1 failure (e.g. ``--strict`` met a bad row). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from molgen import __version__
from molgen.checks import RULES, CheckConfig, CheckSpecError, append_results, run_checks
from molgen.data import locate_qm9, prepare_dataset
from molgen.io import DEFAULT_CHUNK_SIZE, InputError, TableWriter, read_molecules

app = typer.Typer(
    help="molgen: generate, score and filter molecules with a DiScoFormer, checked by RDKit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)


class Failure(Exception):
    """A run that started but cannot finish (exit code 1)."""


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"molgen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """molgen: generate, score and filter molecules."""


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,.0f} rows"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@app.command()
def check(
    input: Path = typer.Argument(..., help="CSV/TSV, .smi, SDF or Parquet file (optionally .gz)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .csv/.tsv (optionally .gz) or .parquet."),
    smiles_column: Optional[str] = typer.Option(None, help="SMILES column (default: a column named smiles)."),
    rule: List[str] = typer.Option(["lipinski", "veber"], help=f"Rule sets: {', '.join(RULES)}."),
    alerts: str = typer.Option("pains,brenk", help="Structural alert sets, comma-separated ('' for none)."),
    prop: List[str] = typer.Option([], "--prop", help="Property window, e.g. 'qed>=0.5' (repeatable)."),
    workers: int = typer.Option(1, min=1, help="Worker processes for RDKit."),
    chunk_size: int = typer.Option(DEFAULT_CHUNK_SIZE, min=1, help="Rows per chunk."),
    strict: bool = typer.Option(False, help="Stop at the first row that is not a valid molecule."),
) -> None:
    """RDKit checks on a molecule file: every input column kept, results appended, a status per row."""
    try:
        config = CheckConfig.from_strings(rule, [alerts] if alerts else [], prop)
        writer = TableWriter(output)
        chunks = read_molecules(input, smiles_column, chunk_size)
    except (InputError, CheckSpecError) as error:
        raise _fail(str(error), 2) from None

    started = time.perf_counter()
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    passed = 0
    try:
        with ExitStack() as stack:
            pool = stack.enter_context(ProcessPoolExecutor(workers)) if workers > 1 else None
            progress = stack.enter_context(_progress())
            task = progress.add_task("checking", rate="")
            for chunk in chunks:
                results = run_checks(chunk.smiles, config, chunk.read_error, pool, chunk.frame.index)
                bad = results["status"] != "ok"
                if strict and bad.any():
                    row = int(results.index[bad.to_numpy().argmax()])
                    raise Failure(f"row {row + 1}: {results.at[row, 'status']}: {results.at[row, 'reason']} (--strict)")
                writer.write(append_results(chunk.frame, results))
                statuses.update(results["status"].tolist())
                passed += int(results["passed_checks"].sum())
                for text in results.loc[~bad, "failed_checks"]:
                    failures.update({item.split(":")[0] for item in text.split(";") if item})
                elapsed = time.perf_counter() - started
                progress.update(task, advance=len(chunk), rate=f"{writer.rows_written / elapsed:,.0f} rows/s")
        writer.close()
    except (InputError, CheckSpecError) as error:
        writer.abort()
        raise _fail(str(error), 2) from None
    except (Failure, pd.errors.ParserError, OSError) as error:
        writer.abort()
        raise _fail(str(error).strip(), 1) from None

    elapsed = time.perf_counter() - started
    out = Console()
    out.print(f"molgen check: {input} -> {output}", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_row("read", f"{writer.rows_written:,}")
    for name, count in sorted(statuses.items()):
        table.add_row(f"status {name}", f"{count:,}")
    for name, count in failures.most_common():
        table.add_row(f"failed {name}", f"{count:,}")
    table.add_row("passed all checks", f"{passed:,}")
    table.add_row("time", f"{elapsed:.1f} s ({writer.rows_written / max(elapsed, 1e-9):,.0f} rows/s)")
    out.print(table)


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Argument(
        "qm9", help="'qm9' (found via --qm9-path, $MOLGEN_QM9, the cache, or --download) or a molecule file."
    ),
    qm9_path: Optional[Path] = typer.Option(None, help="Folder or qm9.csv with qm9_test_idx.json beside it."),
    test_idx: Optional[Path] = typer.Option(None, help="JSON of 0-based test rows (for a molecule file)."),
    smiles_column: Optional[str] = typer.Option(None, help="SMILES column (default: a column named smiles)."),
    max_atoms: Optional[int] = typer.Option(None, min=1, help="Largest molecule kept (default: the largest seen)."),
    val_fraction: float = typer.Option(0.05, min=0.0, max=0.5, help="Share of train carved out for validation."),
    seed: int = typer.Option(0, help="Seed of the validation carve-out."),
    workers: int = typer.Option(2, min=1, help="Worker processes for RDKit."),
    download: bool = typer.Option(False, help="Download QM9 if it is not found locally."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Re-encode even if a cached copy exists."),
) -> None:
    """Read a molecule source, encode it, cache the tensors; print counts per status and split sizes."""
    started = time.perf_counter()
    try:
        if source == "qm9":
            files = locate_qm9(qm9_path, download=download)
            path, test_idx = files.csv, test_idx or files.test_idx
        else:
            path = Path(source)
        dataset, from_cache = prepare_dataset(
            path, test_idx, smiles_column, max_atoms=max_atoms, val_fraction=val_fraction, seed=seed, workers=workers,
            use_cache=not no_cache,
        )
    except (InputError, FileNotFoundError) as error:
        raise _fail(str(error), 2) from None
    except (ValueError, OSError) as error:
        raise _fail(str(error), 1) from None

    out = Console()
    action = "loaded from cache" if from_cache else "prepared"
    out.print(f"{path}: {action} in {time.perf_counter() - started:.1f} s", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("")
    table.add_column("molecules", justify="right")
    for name, count in dataset.status_counts().items():
        table.add_row(f"status {name}", f"{count:,}")
    for name, count in dataset.split_sizes().items():
        table.add_row(f"split {name}", f"{count:,}")
    out.print(table)
    out.print(f"vocabulary: {', '.join(dataset.vocab.labels)}; max atoms {dataset.vocab.max_atoms}")
    out.print(f"fingerprint {dataset.fingerprint}")
    if len(dataset.rejected):
        out.print("first rejected rows:")
        for row in dataset.rejected.head(5).itertuples():
            out.print(f"  row {row.row + 1}: {row.status}: {row.reason}", highlight=False)


@app.command()
def train(
    data: List[str] = typer.Argument(
        ..., help="Training sets, each its own distribution: 'qm9' or a molecule file (with --test-idx for its split)."
    ),
    out: Path = typer.Option(Path("runs/discoformer"), "--out", "-o", help="Run folder: checkpoint.pt, metrics.jsonl."),
    qm9_path: Optional[Path] = typer.Option(None, help="Folder or qm9.csv with qm9_test_idx.json beside it."),
    epochs: int = typer.Option(20, min=1, help="Epochs; the cosine schedule spans them."),
    batch_size: int = typer.Option(256, min=2),
    lr: float = typer.Option(1e-3, min=0.0),
    max_minutes: Optional[float] = typer.Option(None, min=0.0, help="Stop after this much training time (resumable)."),
    checkpoint_minutes: float = typer.Option(5.0, min=0.0, help="Write a checkpoint at least this often."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    seed: int = typer.Option(0),
    d_model: int = typer.Option(128, min=8),
    n_layers: int = typer.Option(4, min=1),
    n_heads: int = typer.Option(8, min=1),
    d_pair: int = typer.Option(32, min=4),
    self_conditioning: bool = typer.Option(True, help="Feed the model its previous x0 estimate."),
    nll_weight: float = typer.Option(0.1, min=0.0, help="Weight of the density regression onto the ELBO."),
    consistency_weight: float = typer.Option(0.01, min=0.0, help="Weight of the score-density consistency loss."),
    logsnr_max: float = typer.Option(9.0),
    logsnr_min: float = typer.Option(-9.0),
    val_molecules: int = typer.Option(1000, min=1, help="Held-out molecules for the per-epoch validation ELBO."),
    workers: int = typer.Option(2, min=1, help="Worker processes for data preparation."),
) -> None:
    """Train a DiScoFormer (score + density heads) on one or more molecule sets."""
    from molgen.losses import LossWeights
    from molgen.train import TrainConfig, Trainer, TrainingData, noise_config

    if device.startswith("cuda") and not _cuda_available():
        raise _fail(f"--device {device} requested but CUDA is not available", 2)
    if d_model % n_heads:
        raise _fail(f"--d-model {d_model} must be a multiple of --n-heads {n_heads}", 2)
    try:
        datasets, names = [], []
        for source in data:
            if source == "qm9":
                files = locate_qm9(qm9_path)
                dataset, _ = prepare_dataset(files.csv, files.test_idx, workers=workers)
            else:
                dataset, _ = prepare_dataset(Path(source), workers=workers)
            datasets.append(dataset)
            names.append(source if source == "qm9" else Path(source).stem)
    except (InputError, FileNotFoundError) as error:
        raise _fail(str(error), 2) from None

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, max_minutes=max_minutes,
        checkpoint_minutes=checkpoint_minutes, val_molecules=val_molecules,
        model={"d_model": d_model, "d_pair": d_pair, "n_layers": n_layers, "n_heads": n_heads,
               "d_ff": 2 * d_model, "self_conditioning": self_conditioning},
        loss={**LossWeights().to_dict(), "nll": nll_weight, "consistency": consistency_weight},
        noise=noise_config(logsnr_max, logsnr_min),
    )
    trainer = Trainer(config, TrainingData.combine(datasets, names), out)
    if resume:
        try:
            trainer.resume()
        except (FileNotFoundError, ValueError) as error:
            raise _fail(str(error), 2) from None
    out_console = Console()
    out_console.print(
        f"training {trainer.model.num_parameters():,} parameters on {', '.join(names)} "
        f"({len(trainer.train_rows):,} molecules, {trainer.steps_per_epoch} steps/epoch) -> {out}",
        highlight=False, soft_wrap=True,
    )
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TextColumn("step {task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("[cyan]{task.fields[losses]}"), TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("train", total=trainer.total_steps, completed=trainer.step, losses="")

        def on_step(values: dict) -> None:
            losses = " ".join(f"{k} {values[k]:.3g}" for k in ("score", "nll", "consistency", "elbo"))
            progress.update(task, completed=values["step"], losses=losses)

        def on_epoch(record: dict) -> None:
            progress.console.print(
                f"epoch {record['epoch']}: score {record['train_score']:.4f} dsm {record['train_dsm']:.3f} "
                f"nll {record['train_nll']:.4f} consistency {record['train_consistency']:.4f} | val ELBO "
                f"{record['val_elbo_nats']:.2f} ± {record['val_elbo_stderr']:.2f} nats, Spearman(D, ELBO) "
                f"{record['spearman_density_elbo']:.3f} | {record['molecules_per_second']:.0f} mol/s",
                highlight=False, soft_wrap=True,
            )

        metrics = trainer.fit(on_step, on_epoch)
    state = "stopped (resume with --resume)" if trainer.step < trainer.total_steps else "finished"
    out_console.print(f"{state} at step {trainer.step:,}; checkpoint {trainer.checkpoint_path}", highlight=False)
    if metrics:
        out_console.print(json.dumps({k: metrics[k] for k in ("val_elbo_nats", "spearman_density_elbo") if k in metrics}))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

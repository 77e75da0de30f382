"""The ``molgen`` command line (Typer).

Exit codes: 0 success, 2 usage error (bad option, unreadable input, unknown column or check),
1 failure (e.g. ``--strict`` met a bad row). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: a spinning thread holds a core that another job on a
# shared machine needs, and molgen generate then ran at a tenth of its speed beside two busy jobs
# (benchmarks/threads.py). It must be set before torch loads OpenMP; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import time
from pathlib import Path
from typing import Callable, List, Optional

import pandas as pd
import torch
import typer
from rdkit import Chem
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from molgen import __version__
from molgen.checkpoint import BUNDLED, export_inference, load_model, read_checkpoint, warm_start_seconds
from molgen.checks import RULES, CheckConfig, CheckSpecError
from molgen.data import locate_qm9, prepare_dataset
from molgen.io import DEFAULT_CHUNK_SIZE, InputError, TableWriter, read_molecules
from molgen.likelihood import MAX_ELBO_ROWS
from molgen.losses import LossWeights
from molgen.model import derived_atom_features
from molgen.pipeline import GenerateOptions
from molgen.pipeline import generate as run_generate
from molgen.sampler import SamplerSettings
from molgen.scoring import DEFAULT_MIN_PERCENTILE, Scorer
from molgen.screen import FilterSpec, ScreenSummary, StrictFailure, check_file, screen_file
from molgen.tokenizer import REPAIR_SWAPS, Vocabulary
from molgen.workers import set_threads
from molgen.train import TrainConfig, Trainer, TrainingData, noise_config

app = typer.Typer(
    help="molgen: generate, score and filter molecules with a DiScoFormer, checked by RDKit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help wraps long option names; Rich's panels cut them at 80 columns
)
data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")

console = Console(stderr=True)


class Failure(Exception):
    """A run that started but cannot finish (exit code 1)."""


AROMATIC_BONDS_OPTION = typer.Option(
    False, help="Keep aromatic bonds as their own bond type (and [nH]-style atom types) instead of kekulizing."
)


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


# Options several commands share (Typer only reads these declarations).
QM9_PATH_OPTION = typer.Option(None, "--qm9-path", help="Folder or qm9.csv with qm9_test_idx.json beside it.")
TRAINED_ON_OPTION = typer.Option(["qm9"], "--data", help="The training sets it was trained on, as for train.")
IN_PLACE_OUTPUT_OPTION = typer.Option(None, "--output", "-o", help="Where to write (default: in place).")
THREADS_OPTION = typer.Option(
    None, "--threads", envvar="MOLGEN_THREADS", min=1, show_default="every core",
    help="CPU threads for the model. Idle threads sleep rather than spin, so a run shares a busy machine fairly.",
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
        read_molecules(input, smiles_column, 1)  # fail on a missing file or column before any work
        TableWriter(output)  # and on an output format that cannot be written
    except (InputError, CheckSpecError) as error:
        raise _fail(str(error), 2) from None

    started = time.perf_counter()
    try:
        with _progress() as progress:
            task = progress.add_task("checking", rate="")

            def on_chunk(summary: ScreenSummary) -> None:
                rate = summary.rows / (time.perf_counter() - started)
                progress.update(task, completed=summary.rows, rate=f"{rate:,.0f} rows/s")

            summary = check_file(input, output, config, smiles_column, chunk_size, workers, strict, on_chunk)
    except (InputError, CheckSpecError) as error:
        raise _fail(str(error), 2) from None
    except StrictFailure as error:
        raise _fail(str(error), 1) from None
    except (pd.errors.ParserError, OSError) as error:
        raise _fail(str(error).strip(), 1) from None

    elapsed = time.perf_counter() - started
    out = Console()
    out.print(f"molgen check: {input} -> {output}", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_row("read", f"{summary.rows:,}")
    for name, count in sorted(summary.statuses.items()):
        table.add_row(f"status {name}", f"{count:,}")
    for name, count in summary.removed_by.most_common():
        table.add_row(f"failed {name}", f"{count:,}")
    table.add_row("passed all checks", f"{summary.passed:,}")
    table.add_row("time", f"{elapsed:.1f} s ({summary.rows / max(elapsed, 1e-9):,.0f} rows/s)")
    out.print(table)


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Argument(
        "qm9", help="'qm9' (found via --qm9-path, $MOLGEN_QM9, the cache, or --download) or a molecule file."
    ),
    qm9_path: Optional[Path] = QM9_PATH_OPTION,
    test_idx: Optional[Path] = typer.Option(None, help="JSON of 0-based test rows (for a molecule file)."),
    smiles_column: Optional[str] = typer.Option(None, help="SMILES column (default: a column named smiles)."),
    max_atoms: Optional[int] = typer.Option(None, min=1, help="Largest molecule kept (default: the largest seen)."),
    val_fraction: float = typer.Option(0.05, min=0.0, max=0.5, help="Share of train carved out for validation."),
    seed: int = typer.Option(0, help="Seed of the validation carve-out."),
    workers: int = typer.Option(2, min=1, help="Worker processes for RDKit."),
    download: bool = typer.Option(False, help="Download QM9 if it is not found locally."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Re-encode even if a cached copy exists."),
    aromatic_bonds: bool = AROMATIC_BONDS_OPTION,
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
            use_cache=not no_cache, aromatic_bonds=aromatic_bonds,
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
    out.print(f"vocabulary: {', '.join(dataset.vocab.labels)}; bonds {', '.join(dataset.vocab.bond_types[1:])}; "
              f"max atoms {dataset.vocab.max_atoms}", highlight=False)
    out.print(f"fingerprint {dataset.fingerprint}")
    if len(dataset.rejected):
        out.print("first rejected rows:")
        for row in dataset.rejected.head(5).itertuples():
            out.print(f"  row {row.row + 1}: {row.status}: {row.reason}", highlight=False)


@app.command()
def train(
    ctx: typer.Context,
    data: List[str] = typer.Argument(
        ..., help="Training sets, each its own distribution: 'qm9' or a molecule file (with --test-idx for its split)."
    ),
    out: Path = typer.Option(Path("runs/discoformer"), "--out", "-o", help="Run folder: checkpoint.pt, metrics.jsonl."),
    qm9_path: Optional[Path] = QM9_PATH_OPTION,
    epochs: int = typer.Option(20, min=1, help="Epochs; the cosine schedule spans them."),
    batch_size: int = typer.Option(256, min=2),
    lr: float = typer.Option(1e-3, min=0.0),
    max_minutes: Optional[float] = typer.Option(None, min=0.0, help="Stop after this much training time (resumable)."),
    schedule_minutes: Optional[float] = typer.Option(
        None, min=0.0, help="Fit the cosine schedule to this much training time: from epoch 2 on, at each epoch's end, "
        "--epochs becomes as many as fit at that epoch's pace, the rate never rising (logged). --resume keeps the last "
        "fitted length unless given this again.",
    ),
    checkpoint_minutes: float = typer.Option(5.0, min=0.0, help="Write a checkpoint at least this often."),
    resume: bool = typer.Option(
        False, help="Continue from OUT/checkpoint.pt, with the options it was trained with unless given again."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    seed: int = typer.Option(0),
    d_model: int = typer.Option(128, min=8),
    n_layers: int = typer.Option(4, min=1),
    n_heads: int = typer.Option(8, min=1),
    d_pair: int = typer.Option(32, min=4),
    self_conditioning: bool = typer.Option(True, help="Feed the model its previous x0 estimate."),
    ring_features: bool = typer.Option(False, help="Also feed closed-walk (ring) counts of that estimate."),
    kekule_features: bool = typer.Option(
        False, help="Also feed whether that estimate's aromatic bonds can be kekulized, and which atom's hydrogen would "
        "fix it (needs --aromatic-bonds).",
    ),
    nll_weight: float = typer.Option(0.1, min=0.0, help="Weight of the density regression onto the ELBO."),
    consistency_weight: float = typer.Option(0.01, min=0.0, help="Weight of the score-density consistency loss."),
    repair_share: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Share of the molecules with an aromatic n/[nH] (or other swappable ring atom, see "
        "--repair-atoms) noised from a copy with that atom swapped so that the ring has no Kekulé structure, the real "
        "molecule the target: teaches the sampler to mend such rings (needs --aromatic-bonds).",
    ),
    repair_atoms: str = typer.Option(
        "hydrogen", help="Swaps of --repair-share: 'hydrogen' moves a ring hydrogen (n <-> [nH]); 'any' puts any atom "
        "type of the same charge in its place (c for o, n for c, ...).",
    ),
    bond_repair_share: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Share of the molecules noised from a copy with one bond added or raised past an "
        "atom's valence, or one bridge removed, the real molecule the target: teaches the sampler to mend valence and "
        "connectivity failures.",
    ),
    logsnr_max: float = typer.Option(9.0),
    logsnr_min: float = typer.Option(-9.0),
    bond_logsnr_shift: float = typer.Option(
        0.0, help="Raise the bonds' log-SNR by this much at every t: noise destroys the bonds later than the atoms "
        "and the sampler settles them first (on QM9 this did not raise raw validity; docs/notes/bonds-before-atoms.md).",
    ),
    val_molecules: int = typer.Option(1000, min=1, help="Held-out molecules for the per-epoch validation ELBO."),
    workers: int = typer.Option(2, min=1, help="Worker processes for data preparation."),
    aromatic_bonds: bool = AROMATIC_BONDS_OPTION,
    init_from: Optional[Path] = typer.Option(
        None, help="Start from this checkpoint's weights (its size options win; --ring-features and --kekule-features "
        "can be added), vocabularies mapped by atom and bond type; optimizer and schedule start afresh.",
    ),
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Train a DiScoFormer (score + density heads) on one or more molecule sets."""
    if init_from is not None and resume:
        raise _fail("--init-from starts a new run; --resume continues one: pass one of them", 2)
    options = dict(ctx.params)
    if resume:
        saved = _saved_training_options(out / "checkpoint.pt")
        # By name: Typer vendors its own click, whose ParameterSource enum is private.
        taken = {name: value for name, value in saved.items()
                 if ctx.get_parameter_source(name).name == "DEFAULT" and value != options[name]}
        if taken:
            Console().print("resuming with the checkpoint's " + ", ".join(
                f"--{name.replace('_', '-')} {value}" for name, value in taken.items()), highlight=False)
        options.update(taken)
    _train(**options)


def _saved_training_options(checkpoint: Path) -> dict:
    """``molgen train``'s options as ``checkpoint`` was trained with them (epochs as last fitted)."""
    try:
        payload = read_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(f"cannot resume: {error}", 2) from None
    config = payload["meta"]["train_config"]
    model, loss = config["model"], config["loss"]
    noise, bond_noise = config["noise"]["atoms"], config["noise"]["bonds"]
    return {
        **{name: config[name] for name in ("epochs", "batch_size", "lr", "seed", "checkpoint_minutes", "val_molecules")},
        **{name: model[name] for name in ("d_model", "n_layers", "n_heads", "d_pair", "self_conditioning",
                                          "ring_features", "kekule_features") if name in model},
        "nll_weight": loss["nll"], "consistency_weight": loss["consistency"],
        "repair_share": loss.get("repair_share", 0.0), "repair_atoms": loss.get("repair_atoms", "hydrogen"),
        "bond_repair_share": loss.get("bond_repair_share", 0.0),
        "logsnr_max": noise["logsnr_max"], "logsnr_min": noise["logsnr_min"],
        "bond_logsnr_shift": bond_noise["logsnr_max"] - noise["logsnr_max"],
        "aromatic_bonds": "aromatic" in payload["vocab"]["bond_types"],
    }


def _train(
    data, out, qm9_path, epochs, batch_size, lr, max_minutes, schedule_minutes, checkpoint_minutes, resume, device,
    seed, d_model, n_layers, n_heads, d_pair, self_conditioning, ring_features, kekule_features, nll_weight,
    consistency_weight, repair_share, repair_atoms, bond_repair_share, logsnr_max, logsnr_min, bond_logsnr_shift,
    val_molecules, workers, aromatic_bonds, init_from, threads,
) -> None:
    _compute_on(device, threads)
    if d_model % n_heads:
        raise _fail(f"--d-model {d_model} must be a multiple of --n-heads {n_heads}", 2)
    for name, on in (("--ring-features", ring_features), ("--kekule-features", kekule_features)):
        if on and not self_conditioning:
            raise _fail(f"{name} reads the self-conditioning estimate: drop --no-self-conditioning", 2)
    if kekule_features and not aromatic_bonds:
        raise _fail("--kekule-features reads aromatic bonds: add --aromatic-bonds", 2)
    if repair_share and not aromatic_bonds:
        raise _fail("--repair-share swaps atoms on aromatic bonds: add --aromatic-bonds", 2)
    if repair_atoms not in REPAIR_SWAPS:
        raise _fail(f"--repair-atoms {repair_atoms!r}: one of {', '.join(REPAIR_SWAPS)}", 2)
    datasets, names = _training_sets(data, qm9_path, workers, aromatic_bonds)
    model_options = {"d_model": d_model, "d_pair": d_pair, "n_layers": n_layers, "n_heads": n_heads,
                     "d_ff": 2 * d_model, "self_conditioning": self_conditioning, "ring_features": ring_features,
                     "kekule_features": kekule_features}
    source = None
    if init_from is not None:
        try:
            source = read_checkpoint(init_from)
        except (FileNotFoundError, ValueError) as error:
            raise _fail(str(error), 2) from None
        # The source's sizes win; derived features can be added (their weights start at zero).
        features = {key: model_options[key] or bool(source["model_config"].get(key))
                    for key in ("ring_features", "kekule_features")}
        model_options = {key: source["model_config"][key] for key in model_options if key in source["model_config"]}
        model_options.update(features)

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, max_minutes=max_minutes,
        schedule_minutes=schedule_minutes,
        checkpoint_minutes=checkpoint_minutes, val_molecules=val_molecules,
        model=model_options,
        loss={**LossWeights().to_dict(), "nll": nll_weight, "consistency": consistency_weight,
              "repair_share": repair_share, "repair_atoms": repair_atoms, "bond_repair_share": bond_repair_share},
        noise=noise_config(logsnr_max, logsnr_min, bond_logsnr_shift),
    )
    training_data = TrainingData.combine(datasets, names)
    held_out = len(training_data.indices("val")) or len(training_data.indices("test"))
    if not len(training_data.indices("train")) or not held_out:
        raise _fail(f"{', '.join(names)}: {len(training_data.indices('train'))} training and {held_out} held-out "
                    "molecules; training needs both (5% of a file's rows are held out: give it at least 20)", 2)
    trainer = Trainer(config, training_data, out)
    try:
        if resume:
            trainer.resume()
        elif source is not None:
            mapped = trainer.initialize_from(init_from, source)
            Console().print(f"initialized from {init_from} ({', '.join(mapped)} mapped by type)", highlight=False)
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
            progress.update(task, total=trainer.total_steps)  # --schedule-minutes may have changed the length
            progress.console.print(
                f"epoch {record['epoch']}/{record['epochs']}: score {record['train_score']:.4f} dsm {record['train_dsm']:.3f} "
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


def _training_sets(
    data: List[str], qm9_path: Optional[Path], workers: int, aromatic_bonds: bool
) -> tuple[list, list[str]]:
    """Prepared datasets and distribution names for ``molgen train``'s DATA arguments."""
    try:
        datasets, names = [], []
        for source in data:
            files = locate_qm9(qm9_path) if source == "qm9" else None
            path, test_idx = (files.csv, files.test_idx) if files else (Path(source), None)
            dataset, _ = prepare_dataset(path, test_idx, workers=workers, aromatic_bonds=aromatic_bonds)
            datasets.append(dataset)
            names.append(source if source == "qm9" else Path(source).stem)
    except (InputError, FileNotFoundError) as error:
        raise _fail(str(error), 2) from None
    return datasets, names


@app.command()
def distill(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (RUN/checkpoint.pt)."),
    data: List[str] = TRAINED_ON_OPTION,
    qm9_path: Optional[Path] = QM9_PATH_OPTION,
    output: Optional[Path] = IN_PLACE_OUTPUT_OPTION,
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
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ... (the result is written for CPU)."),
    workers: int = typer.Option(2, min=1, help="Worker processes for data preparation."),
    proposal_only: bool = typer.Option(
        False, help="Only re-estimate the ELBO's importance proposal over noise levels (80 s on a 2-core "
        "CPU for QM9) and keep the density head; prints the ELBO's spread under the old proposal and the new."),
    add_members: int = typer.Option(
        0, min=0, help="Keep the density head and fit this many more members of it on one set of fresh targets "
        "(other molecules and noise, the stored proposal), each from its own start; D becomes the members' mean, "
        "whose errors partly cancel. 0 refits the whole head."),
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Refit the density head onto low-variance ELBOs (backbone frozen) and recalibrate it."""
    from molgen.distill import DistillConfig, distill_checkpoint, refit_elbo_proposal

    _compute_on(device, threads)
    config = DistillConfig(molecules=molecules, elbo_samples=elbo_samples, epochs=epochs, huber_nats=huber_nats,
                            atom_terms=atom_terms, batch_size=batch_size, elbo_rows=elbo_rows, seed=seed,
                            device=device, add_members=add_members)
    doing, fit = ("estimating the ELBO's importance proposal", refit_elbo_proposal) if proposal_only else (
        "distilling", distill_checkpoint)
    report = _fit_on_training_data(checkpoint, data, qm9_path, workers, doing,
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
            summary += (f", with {_member_numbers(report['members'])} (alone: "
                        f"{report['spearman_new_members']:.3f})")
    Console().print(f"{summary}; written to {output or checkpoint}", highlight=False, soft_wrap=True)


@app.command()
def repair(
    checkpoint: Path = typer.Argument(..., help="A checkpoint trained with --kekule-features (RUN/checkpoint.pt)."),
    data: List[str] = TRAINED_ON_OPTION,
    qm9_path: Optional[Path] = QM9_PATH_OPTION,
    output: Optional[Path] = IN_PLACE_OUTPUT_OPTION,
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
    workers: int = typer.Option(2, min=1, help="Worker processes for data preparation."),
) -> None:
    """Fit a repair adapter (everything else frozen) that acts only while the sampler's estimate is no molecule:
    on broken copies of training molecules, then (--chains) on the sampler's own chains."""
    from molgen.repair import RepairConfig, repair_checkpoint

    config = RepairConfig(width=width, pair_width=pair_width, steps=steps, batch_size=batch_size,
                          min_logsnr=min_logsnr, chains=chains, chain_steps=chain_steps, check_chains=check_chains,
                          seed=seed)
    report = _fit_on_training_data(
        checkpoint, data, qm9_path, workers, "fitting the repair adapter",
        lambda training, log: repair_checkpoint(checkpoint, training, config, output, log=log))
    Console().print(
        f"repair adapter: of {report['check_gated']:,} held-out estimates that were no molecule, the next pass made "
        f"{100 * report['mended_after']:.1f}% molecules ({100 * report['mended_before']:.1f}% without it); "
        f"{steps:,} steps; written to {output or checkpoint}",
        highlight=False, soft_wrap=True,
    )
    own = report.get("own_chains")
    if own:
        Console().print(
            f"fine-tuned on {own['gated_states']:,} gated states of {own['chains']:,} of its own chains: raw validity of "
            f"{own['check_chains']:,} fresh chains {100 * own['raw_validity_before']:.1f}% -> "
            f"{100 * own['raw_validity_after']:.1f}%", highlight=False, soft_wrap=True)


def _member_numbers(members: list[int]) -> str:
    """Density members by their 1-based numbers: "density member 2", "density members 3-5"."""
    numbers = [member + 1 for member in members]
    if len(numbers) == 1:
        return f"density member {numbers[0]}"
    return f"density members {numbers[0]}-{numbers[-1]}"


def _fit_on_training_data(
    checkpoint: Path, data: List[str], qm9_path: Optional[Path], workers: int, doing: str,
    fit: Callable[[TrainingData, Callable[[str], None]], dict],
) -> dict:
    """Prepare the training sets ``checkpoint`` was trained on, in its bond vocabulary, and run ``fit``
    on them under a status line; a bad checkpoint or data file is one line and exit code 2."""
    try:
        aromatic_bonds = Vocabulary.from_dict(read_checkpoint(checkpoint)["vocab"]).aromatic_bonds
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error), 2) from None
    datasets, names = _training_sets(data, qm9_path, workers, aromatic_bonds)
    try:
        with console.status(doing) as status:
            return fit(TrainingData.combine(datasets, names), status.update)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error), 2) from None


def _compute_on(device: str, threads: int | None) -> None:
    """Exit with a one-line message when ``--device`` names CUDA on a machine without it; set the
    CPU threads."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise _fail(f"--device {device} requested but CUDA is not available", 2)
    set_threads(threads)



DRAW_ESTIMATE_OPTION = typer.Option(
    SamplerSettings().draw_estimate, "--draw-estimate/--mean-estimate",
    help="Predictor steps towards a molecule drawn from the estimate (closer to the model's reverse step) "
         "or towards the estimate's mean (the earlier sampler: fewer unique and novel molecules, a higher FCD).",
)


@app.command()
def generate(
    n: int = typer.Option(1000, "-n", min=1, help="How many molecules to sample."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .csv/.tsv (optionally .gz) or .parquet."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint (default: the bundled QM9 model)."),
    seed: int = typer.Option(0, help="Same seed and options, same molecules (on CPU)."),
    steps: int = typer.Option(SamplerSettings().steps, min=2, help="Predictor steps."),
    corrector_steps: int = typer.Option(
        0, min=0, help="Langevin corrector moves per step. One move about halves the speed; on the first bundled "
        "adapter it lowered FCD and cost a third of a point of uniqueness (docs/notes/predictor-estimate.md)."),
    snr: float = typer.Option(0.1, min=0.0, help="Target signal-to-noise ratio of the corrector."),
    mala: bool = typer.Option(False, help="Metropolis-adjust the corrector with the density head."),
    temperature: float = typer.Option(
        1.0, min=0.0, help="Scale of the predictor's noise: below 1 gives fewer invalid but less varied molecules.",
    ),
    draw_estimate: bool = DRAW_ESTIMATE_OPTION,
    batch_size: int = typer.Option(500, min=1),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    distribution: Optional[str] = typer.Option(None, help="Training distribution to sample ('null' = generic)."),
    num_atoms: Optional[int] = typer.Option(None, min=1, help="Fixed heavy-atom count (default: sampled)."),
    min_percentile: float = typer.Option(
        DEFAULT_MIN_PERCENTILE, min=0.0, max=100.0,
        help="Reject samples whose density is below this percentile of held-out molecules.",
    ),
    no_filter: bool = typer.Option(False, "--no-filter", help="Rank every unique sample; filters only reported."),
    prop: List[str] = typer.Option([], "--prop", help="Property window, e.g. 'qed>=0.4' (repeatable)."),
    rule: List[str] = typer.Option(["lipinski", "veber"], help=f"Rule sets: {', '.join(RULES)}."),
    alerts: str = typer.Option("pains,brenk", help="Structural alert sets, comma-separated ('' for none)."),
    sdf: Optional[Path] = typer.Option(None, help="Also write the ranked molecules to this SDF."),
    grid: Optional[Path] = typer.Option(None, help="Also draw the top 16 ranked molecules to this PNG."),
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Sample molecules with the score, filter them by density, check them with RDKit, rank them."""
    _compute_on(device, threads)
    try:
        checks = CheckConfig.from_strings(rule, [alerts] if alerts else [], prop)
        writer = TableWriter(output)
        loaded = load_model(checkpoint, device=device)
    except (CheckSpecError, InputError, FileNotFoundError, ValueError) as error:
        raise _fail(str(error), 2) from None
    options = GenerateOptions(
        n=n, seed=seed, batch_size=batch_size, device=device, distribution=distribution, num_atoms=num_atoms,
        sampler=SamplerSettings(steps=steps, corrector_steps=corrector_steps, snr=snr, mala=mala,
                                temperature=temperature, draw_estimate=draw_estimate),
        min_percentile=min_percentile, apply_filters=not no_filter, checks=checks,
    )
    started = time.perf_counter()
    try:
        with Progress(
            SpinnerColumn(), TextColumn("sampling"), TextColumn("{task.completed:,.0f}/{task.total:,.0f} molecules"),
            TimeElapsedColumn(), console=console, transient=True,
        ) as progress:
            task = progress.add_task("sample", total=n)
            frame, stats = run_generate(loaded, options, lambda done: progress.update(task, completed=done))
    except ValueError as error:
        raise _fail(str(error), 2) from None
    elapsed = time.perf_counter() - started
    writer.write(frame)
    writer.close()
    if sdf is not None:
        _write_sdf(frame, sdf)
    if grid is not None:
        _draw_grid(frame, grid)

    out = Console()
    out.print(f"molgen generate: {n} samples -> {output}", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("")
    table.add_column("molecules", justify="right")
    table.add_column("share", justify="right")
    for label, key in [("proposed", "proposed"), ("valid without correction", "raw_valid"), ("unique", "unique"),
                       ("novel", "novel"), ("passed density", "passed_density"), ("passed checks", "passed_checks"),
                       ("passed density and checks", "passed_both")]:
        value = stats.get(key)
        table.add_row(label, "n/a" if value is None else f"{value:,}",
                      "" if value is None else f"{100 * value / max(stats['proposed'], 1):.1f}%")
    if stats.get("acceptance_rate") is not None:
        table.add_row("MALA acceptance", "", f"{100 * stats['acceptance_rate']:.1f}%")
    table.add_row("time", f"{elapsed:.1f} s", f"{n / elapsed:,.1f} mol/s")
    out.print(table)


def _write_sdf(frame: pd.DataFrame, path: Path) -> None:
    writer = Chem.SDWriter(str(path))
    for row in frame[frame["rank"].notna()].itertuples():
        mol = Chem.MolFromSmiles(row.smiles)
        mol.SetProp("_Name", f"rank {row.rank}")
        for column in ("log_density", "density_percentile", "qed", "sa_score", "failed_checks"):
            mol.SetProp(column, str(getattr(row, column)))
        writer.write(mol)
    writer.close()


def _draw_grid(frame: pd.DataFrame, path: Path) -> None:
    top = frame[frame["rank"].notna()].head(16)
    mols = [Chem.MolFromSmiles(s) for s in top["smiles"]]
    legends = [f"#{r} logP {d:.1f}" for r, d in zip(top["rank"], top["log_density"])]
    from rdkit.Chem import Draw  # needs X rendering libraries that headless servers may lack

    image = Draw.MolsToGridImage(mols, molsPerRow=4, subImgSize=(250, 200), legends=legends)
    image.save(str(path))


@app.command()
def info(
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint (default: the bundled QM9 model)."),
    checkpoint_option: Optional[Path] = typer.Option(None, "--checkpoint", hidden=True),  # the earlier spelling
) -> None:
    """Print a checkpoint's card: data, size, training, metrics."""
    checkpoint = checkpoint or checkpoint_option
    try:
        loaded = load_model(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error), 2) from None
    meta, metrics = loaded.meta, loaded.metrics
    model_config = loaded.model.config
    derived = ", ".join(name for name, _ in derived_atom_features(model_config))
    self_conditioning = f"self-conditioning with {derived} features" if model_config.self_conditioning else (
        "no self-conditioning")
    table = Table(title=f"molgen checkpoint {checkpoint or BUNDLED.name}", show_header=False)
    table.add_column("", overflow="fold")  # long figure names wrap whole rather than lose their ends
    table.add_column("")
    rows = [
        ("distributions", ", ".join(loaded.distributions)),
        ("vocabulary", f"{', '.join(loaded.vocab.labels)}; bonds {', '.join(loaded.vocab.bond_types[1:])}; "
                       f"up to {loaded.vocab.max_atoms} heavy atoms"),
        ("parameters", f"{meta.get('parameters', loaded.model.num_parameters()):,}"),
        ("architecture", f"{model_config.n_layers} layers, d_model {model_config.d_model}, d_pair "
                         f"{model_config.d_pair}, {self_conditioning}; density head on "
                         f"{'[CLS] plus per-atom terms' if model_config.density_atom_terms else '[CLS]'}"
                         f"{f', mean of {model_config.density_members} members' if model_config.density_members > 1 else ''}"),
        ("data fingerprints", ", ".join(meta.get("data_fingerprints", []))),
        ("training", f"{meta.get('training_seconds', 0) / 60:.0f} min on "
                     f"{meta.get('train_config', {}).get('device', 'cpu')}, {meta.get('epochs_done', 0):.1f} epochs, "
                     f"step {meta.get('step', 0):,}"),
        ("training set hashes", "yes (novelty)" if loaded.train_hashes is not None else "no"),
        ("content digest", f"sha256 {loaded.digest} (checked at load)" if loaded.digest
         else "none (written before checkpoints carried one: not checked)"),
    ]
    if meta.get("initialized_from"):
        start = meta["initialized_from"]
        rows.insert(6, ("initialized from", f"{Path(start['path']).name}: {start['training_seconds'] / 60:.0f} min, "
                                            f"step {start['step']:,}; {warm_start_seconds(start) / 60:.0f} min with its "
                                            "own warm starts "
                                            "(not counted above)"))
    distillation = meta.get("distillation")
    # A distillation replaced the density head after the last epoch: that epoch's Spearman was another head's.
    stale = {"spearman_density_elbo"} if distillation else set()
    for key in ("val_elbo_nats", "val_elbo_stderr", "spearman_density_elbo", "val_molecules"):
        if key in metrics and key not in stale:
            value = metrics[key]
            rows.append((f"last epoch: {key}", f"{value:.3f}" if isinstance(value, float) else str(value)))
    if distillation:
        rows.append(("distillation: Spearman(D, ELBO)",
                     f"{distillation['spearman_density_elbo_before']:.3f} -> "
                     f"{distillation['spearman_density_elbo_after']:.3f} on {distillation['check_molecules']} "
                     f"held-out molecules"))
        fit = distillation.get("config", {})
        if "molecules" in fit:
            rows.append(("distillation: targets", f"{fit['molecules']:,} x {fit['elbo_samples']} levels, "
                         f"{fit['epochs']} passes on {fit.get('device', 'cpu')}"))
    for added in meta.get("density_members", []):
        fit = added["config"]
        rows.append((_member_numbers(added["members"]),
                     f"{fit['molecules']:,} x {fit['elbo_samples']} levels on {fit.get('device', 'cpu')}; Spearman(D, ELBO) "
                     f"{added['spearman_density_elbo_before']:.3f} -> {added['spearman_density_elbo_after']:.3f} on "
                     f"{added['check_molecules']} held-out molecules ({'the member' if len(added['members']) == 1 else 'their mean'} "
                     f"alone: {added['spearman_new_members']:.3f})"))
    proposal = meta.get("elbo_proposal")
    if proposal:
        rows.append(("ELBO importance proposal", f"re-estimated on {proposal['pilot_molecules']:,} training molecules; "
                     f"{proposal['check_samples']}-level ELBO of {proposal['check_molecules']:,} held-out molecules "
                     f"varies by {proposal['elbo_sd_before']:.2f} -> {proposal['elbo_sd_after']:.2f} nats (SD)"))
    repair = meta.get("repair")
    if repair:
        fit = repair["config"]
        pair_side = f" (pair side {fit['pair_width']})" if fit.get("pair_width") else ""
        rows.append(("repair adapter", f"width {fit['width']}{pair_side}, acts at log-SNR >= {fit['min_logsnr']:g} "
                     f"while the estimate is no molecule; {fit['steps']:,} steps; mends {100 * repair['mended_after']:.1f}% of "
                     f"such held-out estimates ({100 * repair['mended_before']:.1f}% without it)"))
        own = repair.get("own_chains")
        if own:
            rows.append(("repair adapter: own chains",
                         f"{own['gated_states']:,} gated states of {own['chains']:,} chains, "
                         f"{fit['chain_steps']:,} steps; raw validity "
                         f"{100 * own['raw_validity_before']:.1f}% -> {100 * own['raw_validity_after']:.1f}% on "
                         f"{own['check_chains']:,} fresh chains"))
    for label, value in (loaded.evaluation or {}).items():
        if isinstance(value, list):  # an interval
            value = " to ".join(f"{bound:.4g}" for bound in value)
        rows.append((f"evaluate: {label}", f"{value:.4g}" if isinstance(value, float) else str(value)))
    for label, value in rows:
        table.add_row(label, value)
    Console().print(table)


@app.command()
def evaluate(
    output: Path = typer.Option(..., "--output", "-o", help="Report JSON."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint (default: the bundled QM9 model)."),
    samples: Optional[Path] = typer.Option(
        None, help="Evaluate the molecules of this file (any model's samples) instead of sampling a checkpoint."
    ),
    smiles_column: Optional[str] = typer.Option(None, help="SMILES column of --samples (default: detected)."),
    n: int = typer.Option(10_000, "-n", min=2, help="Samples to draw (the published tables use 10,000)."),
    seed: int = typer.Option(0),
    draws: int = typer.Option(
        3, min=1, help="Independent draws of -n samples (seeds --seed, --seed + 1, ...) when sampling a checkpoint: "
        "the generation figures are their means, each draw listed beside them. One 10,000-sample validity or "
        "uniqueness near 97% moves by 0.17 points from seed to seed."),
    qm9_path: Optional[Path] = QM9_PATH_OPTION,
    density_molecules: int = typer.Option(1000, min=2, help="Test molecules (and their mutants) for density metrics."),
    elbo_samples: int = typer.Option(
        256, min=2, help="Noise levels per ELBO estimate (the yardstick for Spearman and the NLL bound)."
    ),
    temperature: float = typer.Option(1.0, min=0.0, help="Sampler temperature, as in `molgen generate`."),
    steps: int = typer.Option(SamplerSettings().steps, min=2, help="Predictor steps, as in `molgen generate`."),
    draw_estimate: bool = DRAW_ESTIMATE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Generation and density metrics against the QM9 test split, with the kNN-Tanimoto reference."""
    set_threads(threads)
    from molgen.evaluation.generation import generation_metrics
    from molgen.evaluation.report import evaluate_discoformer, load_reference_data

    try:
        loaded = load_model(checkpoint) if samples is None else None
        with console.status("loading QM9 and building decoys"):
            data = load_reference_data(qm9_path, density_molecules, seed=seed)
        sample_smiles = None
        if samples is not None:
            sample_smiles = [s for chunk in read_molecules(samples, smiles_column=smiles_column) for s in chunk.smiles]
    except (InputError, FileNotFoundError, ValueError) as error:
        raise _fail(str(error), 2) from None
    started = time.perf_counter()
    if samples is None:
        with console.status("evaluating") as status:
            sampler = SamplerSettings(steps=steps, temperature=temperature, draw_estimate=draw_estimate)
            report = evaluate_discoformer(loaded, data, n, seed, elbo_samples, sampler, log=status.update,
                                          draws=draws)
        report["checkpoint"] = str(checkpoint or "bundled")
    else:
        with console.status(f"evaluating {len(sample_smiles):,} molecules of {samples}"):
            report = {"samples_file": str(samples),
                      "generation": generation_metrics(sample_smiles, data.test, set(data.train) | set(data.val))}
    report["settings"] = {"n": n, "seed": seed, "draws": draws if samples is None else 1,
                          "density_molecules": density_molecules, "elbo_samples": elbo_samples}
    report["molgen_version"] = __version__
    report["seconds"] = time.perf_counter() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    Console().print(_report_table(report), soft_wrap=True)


def _report_table(report: dict) -> Table:
    table = Table(title="molgen evaluate (QM9 test split)", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    generation = report["generation"]

    def percent(value, digits=1):
        return "n/a" if value is None else f"{100 * value:.{digits}f}%"

    def fine_percent(value):  # validity and uniqueness: their bars are decided by tenths of a point
        return percent(value, 2)

    def number(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    def interval(bounds):
        return "n/a" if bounds is None else f"{bounds[0]:.3f} to {bounds[1]:.3f}"

    draws = generation.get("draws", [])

    def mean_and_draws(key, show):
        """The figure, followed by each draw's when there are several (they differ by tenths of a point)."""
        mean = show(generation.get(key))
        return mean if len(draws) < 2 else f"{mean} ({', '.join(show(draw[key]).rstrip('%') for draw in draws)})"

    samples = f"{generation['samples']:,}"
    if len(draws) > 1:  # the rows below are the draws' means, then each draw's figure
        samples += f" x {len(draws)} draws, seeds {draws[0]['seed']}-{draws[-1]['seed']}"
    rows = [
        ("samples", samples),
        ("validity without correction", mean_and_draws("validity_without_correction", fine_percent)),
        ("validity", percent(generation["validity"])),
        ("uniqueness", mean_and_draws("uniqueness", fine_percent)),
        ("novelty", mean_and_draws("novelty", percent)),
        ("FCD vs test", mean_and_draws("fcd_test", number)),
        ("NSPDK MMD vs test", number(generation.get("nspdk_mmd_test"), 4)),
        ("KL score (GuacaMol)", number((generation.get("kl_test") or {}).get("score"))),
        ("internal diversity", number(generation["internal_diversity"])),
    ]
    density = report.get("density")
    if density:
        nll = density["nll_bound_test"]
        knn = report["reference_knn_tanimoto"]
        rows += [
            ("NLL bound, test (nats)", f"{nll['mean']:.2f} ± {nll['stderr']:.2f}"),
            ("Spearman(D, ELBO)", number(density["spearman_density_elbo"])),
            ("  ELBO repeatability (ceiling)", number(density["elbo_repeatability_spearman"])),
            ("Spearman(D, mean of both ELBOs)", number(density.get("spearman_density_elbo_pooled"))),
            ("  against the exact ELBO (corrected)", number(density.get("spearman_density_elbo_corrected"))),
            ("  95% bootstrap interval over molecules", interval(density.get("spearman_density_elbo_corrected_interval"))),
            ("AUROC log_density vs mutants", number(density["log_density"].get("auroc_vs_mutants"))),
            ("  kNN-Tanimoto reference", number(knn.get("auroc_vs_mutants"))),
            ("AUROC log_density vs drug-like", number(density["log_density"].get("auroc_vs_druglike"))),
            ("  kNN-Tanimoto reference", number(knn.get("auroc_vs_druglike"))),
            ("calibration: share below 5th percentile", percent(density["calibration_test"]["share_below_5th"])),
            ("calibration: KS distance to uniform", number(density["calibration_test"]["ks_distance"])),
        ]
    rows.append(("time", f"{report['seconds']:.0f} s"))
    for label, value in rows:
        table.add_row(label, value)
    return table


def _screen(
    input: Path, output: Path, checkpoint: Optional[Path], smiles_column: Optional[str], exact: bool,
    batch_size: int, workers: int, chunk_size: int, strict: bool, resume: bool, device: str, threads: Optional[int],
    distribution: Optional[str], filter_spec: Optional[FilterSpec], keep_failed: bool,
) -> ScreenSummary:
    """Shared body of ``score`` and ``filter``: errors mapped to exit codes, a progress bar."""
    _compute_on(device, threads)
    try:
        scorer = Scorer(load_model(checkpoint, device=device), distribution, device, batch_size, exact)
        read_molecules(input, smiles_column, 1)  # fail on a missing file or column before any work
    except (InputError, FileNotFoundError, ValueError) as error:
        raise _fail(str(error), 2) from None
    started = time.perf_counter()
    try:
        with _progress() as progress:
            task = progress.add_task("scoring" if filter_spec is None else "filtering", rate="")

            def on_chunk(summary: ScreenSummary) -> None:
                rate = (summary.rows - summary.skipped_on_resume) / (time.perf_counter() - started)
                progress.update(task, completed=summary.rows, rate=f"{rate:,.0f} rows/s")

            summary = screen_file(input, output, scorer, smiles_column, chunk_size, workers, strict, resume,
                                  filter_spec, keep_failed, on_chunk)
    except (InputError, CheckSpecError) as error:
        raise _fail(str(error), 2) from None
    except StrictFailure as error:
        raise _fail(str(error), 1) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; continue with the same command and --resume ({output}.partial kept)", 1) from None
    except (pd.errors.ParserError, OSError) as error:
        raise _fail(str(error).strip(), 1) from None
    summary_seconds = time.perf_counter() - started
    new_rows = summary.rows - summary.skipped_on_resume
    out = Console()
    out.print(f"{input} -> {output}: {summary.rows:,} rows"
              + (f" ({summary.skipped_on_resume:,} done before --resume)" if summary.skipped_on_resume else "")
              + f"; {new_rows:,} in {summary_seconds:.1f} s ({new_rows / max(summary_seconds, 1e-9):,.0f} rows/s)",
              highlight=False, soft_wrap=True)
    for name, count in sorted(summary.statuses.items()):
        out.print(f"  status {name}: {count:,}", highlight=False)
    return summary


@app.command()
def score(
    input: Path = typer.Argument(..., help="CSV/TSV, .smi, SDF or Parquet file (optionally .gz)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .csv/.tsv (optionally .gz) or .parquet."),
    smiles_column: Optional[str] = typer.Option(None, help="SMILES column (default: a column named smiles)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint (default: the bundled QM9 model)."),
    exact: bool = typer.Option(False, help="Also the ELBO (a lower bound on log P, nats) and its standard error: slower."),
    batch_size: int = typer.Option(2048, min=1, help="Molecules per model call."),
    workers: int = typer.Option(2, min=1, help="Processes parsing with RDKit while the model scores."),
    chunk_size: int = typer.Option(10_000, min=1, help="Rows per chunk (memory stays flat)."),
    strict: bool = typer.Option(False, help="Stop at the first row that is not ok (exit 1)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run (same options) from OUTPUT.partial."),
    device: str = typer.Option("cpu"),
    distribution: Optional[str] = typer.Option(None, help="Training distribution to score against ('null' = generic)."),
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Append log_density, density_percentile, status and reason to every row of a molecule file."""
    _screen(input, output, checkpoint, smiles_column, exact, batch_size, workers, chunk_size, strict, resume,
            device, threads, distribution, None, False)


@app.command("filter")
def filter_command(
    input: Path = typer.Argument(..., help="CSV/TSV, .smi, SDF or Parquet file (optionally .gz)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .csv/.tsv (optionally .gz) or .parquet."),
    min_percentile: float = typer.Option(
        DEFAULT_MIN_PERCENTILE, min=0.0, max=100.0, help="Keep rows at or above this density percentile."
    ),
    rule: List[str] = typer.Option([], help=f"Rule sets: {', '.join(RULES)}."),
    alerts: str = typer.Option("", help="Structural alert sets, comma-separated, e.g. pains,brenk."),
    prop: List[str] = typer.Option([], "--prop", help="Property window, e.g. 'mw<=300' (repeatable)."),
    keep_failed: bool = typer.Option(False, help="Write every row, with passed and failed_checks."),
    smiles_column: Optional[str] = typer.Option(None, help="SMILES column (default: a column named smiles)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint (default: the bundled QM9 model)."),
    batch_size: int = typer.Option(2048, min=1),
    workers: int = typer.Option(2, min=1),
    chunk_size: int = typer.Option(10_000, min=1),
    strict: bool = typer.Option(False, help="Stop at the first row that is not ok (exit 1)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run (same options) from OUTPUT.partial."),
    device: str = typer.Option("cpu"),
    distribution: Optional[str] = typer.Option(None),
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Score plus RDKit checks; write the rows that pass (all rows with --keep-failed)."""
    try:
        checks = CheckConfig.from_strings(rule, [alerts] if alerts else [], prop)
    except CheckSpecError as error:
        raise _fail(str(error), 2) from None
    spec = FilterSpec(min_percentile=min_percentile, checks=checks)
    summary = _screen(input, output, checkpoint, smiles_column, False, batch_size, workers, chunk_size, strict,
                      resume, device, threads, distribution, spec, keep_failed)
    out = Console()
    for name, count in summary.removed_by.most_common():
        out.print(f"  removed by {name}: {count:,}", highlight=False)
    out.print(f"  passed: {summary.passed:,} of {summary.rows:,}", highlight=False)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (RUN/checkpoint.pt)."),
    output: Path = typer.Option(..., "--output", "-o", help="Inference checkpoint to write."),
    half: bool = typer.Option(False, help="Store the weights as float16 (half the size)."),
    evaluation: Optional[Path] = typer.Option(
        None, help="A `molgen evaluate` report of this checkpoint: its headline figures go into the card."
    ),
) -> None:
    """Write the inference part of a training checkpoint: EMA weights and the plain-value card."""
    from molgen.evaluation.report import headline_figures

    try:
        figures = headline_figures(json.loads(evaluation.read_text())) if evaluation else None
        export_inference(checkpoint, output, half, evaluation=figures)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise _fail(f"{type(error).__name__}: {error}" if isinstance(error, KeyError) else str(error), 2) from None
    Console().print(f"{output}: {output.stat().st_size / 2**20:.1f} MiB", highlight=False)

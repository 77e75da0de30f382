"""``molgen train``: train a DiScoFormer on one or more molecule sets; and the training-set preparation
that ``distill`` and ``repair`` share with it. Data and training code load inside the commands, so
that ``molgen generate`` and ``score`` do not pay for torch-geometric at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from molgen.checkpoint import read_checkpoint
from molgen.cli import common
from molgen.tokenizer import Vocabulary

if TYPE_CHECKING:
    from molgen.training.data import TrainingData
    from molgen.training.trainer import TrainConfig, Trainer


def train(
    ctx: typer.Context,
    data: List[str] = typer.Argument(
        ..., help="Training sets, each its own distribution: 'qm9', a molecule file (named after the file), or "
        "NAME=FILE."
    ),
    out: Path = typer.Option(Path("runs/discoformer"), "--out", "-o", help="Run folder: checkpoint.pt, metrics.jsonl."),
    qm9_path: Optional[Path] = common.qm9_path_option(),
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
    device: str = common.device_option(),
    seed: int = typer.Option(0),
    d_model: int = typer.Option(128, min=8),
    n_layers: int = typer.Option(4, min=1),
    n_heads: int = typer.Option(8, min=1),
    d_pair: int = typer.Option(32, min=4),
    self_conditioning: bool = typer.Option(True, help="Feed the model its previous x0 estimate."),
    kekule_features: bool = typer.Option(
        False, help="Also feed whether that estimate's aromatic bonds can be kekulized, and which atom's hydrogen would "
        "fix it (needs --aromatic-bonds).",
    ),
    nll_weight: float = typer.Option(0.1, min=0.0, help="Weight of the density regression onto the ELBO."),
    consistency_weight: float = typer.Option(0.01, min=0.0, help="Weight of the score-density consistency loss."),
    bond_repair_share: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Share of the molecules noised from a copy with one bond added or raised past an "
        "atom's valence, or one bridge removed, the real molecule the target: teaches the sampler to mend valence and "
        "connectivity failures.",
    ),
    logsnr_max: float = typer.Option(9.0),
    logsnr_min: float = typer.Option(-9.0),
    val_molecules: int = typer.Option(1000, min=1, help="Held-out molecules for the per-epoch validation ELBO."),
    size_buckets: int = typer.Option(
        0, min=0, help="Cut batches from windows of this many batches sorted by molecule size, then shuffle them: "
        "less padding when sizes vary (MOSES). 0: plain shuffled batches."),
    max_atoms: Optional[int] = typer.Option(
        None, min=1, help="Room for molecules of this many heavy atoms (default: the largest in the data), for "
        "distributions added later or larger samples."),
    workers: int = common.workers_option(2, "Worker processes for data preparation."),
    aromatic_bonds: bool = common.aromatic_bonds_option(),
    init_from: Optional[Path] = typer.Option(
        None, help="Start from this checkpoint's weights (its size options win; --kekule-features can be added), "
        "vocabularies mapped by atom and bond type; optimizer and schedule start afresh.",
    ),
    threads: Optional[int] = common.threads_option(),
) -> None:
    """Train a DiScoFormer (score + density heads) on one or more molecule sets."""
    from molgen.training.data import TrainingData
    from molgen.training.trainer import Trainer

    if init_from is not None and resume:
        raise common.fail("--init-from starts a new run; --resume continues one: pass one of them", 2)
    options = dict(ctx.params)
    if resume:
        saved = saved_training_options(out / "checkpoint.pt")
        # By name: Typer vendors its own click, whose ParameterSource enum is private.
        taken = {name: value for name, value in saved.items()
                 if ctx.get_parameter_source(name).name == "DEFAULT" and value != options[name]}
        if taken:
            Console().print("resuming with the checkpoint's " + ", ".join(
                f"--{name.replace('_', '-')} {value}" for name, value in taken.items()), highlight=False)
        options.update(taken)
    common.compute_on(device, threads)
    config, source = training_config(options)
    datasets, names = training_sets(data, qm9_path, workers, options["aromatic_bonds"])
    training_data = TrainingData.combine(datasets, names, options["max_atoms"])
    held_out = len(training_data.indices("val")) or len(training_data.indices("test"))
    if not len(training_data.indices("train")) or not held_out:
        raise common.fail(f"{', '.join(names)}: {len(training_data.indices('train'))} training and {held_out} "
                          "held-out molecules; training needs both (5% of a file's rows are held out: give it at "
                          "least 20)", 2)
    trainer = Trainer(config, training_data, out)
    with common.exit_codes():
        if resume:
            trainer.resume()
        elif source is not None:
            mapped = trainer.initialize_from(init_from, source)
            Console().print(f"initialized from {init_from} ({', '.join(mapped)} mapped by type)", highlight=False)
    _fit(trainer, names, out)


def saved_training_options(checkpoint: Path) -> dict:
    """``molgen train``'s options as ``checkpoint`` was trained with them (epochs as last fitted)."""
    from molgen.training.trainer import TrainConfig

    try:
        payload = read_checkpoint(checkpoint)
        options = TrainConfig.from_dict(payload["meta"]["train_config"]).options()
    except (FileNotFoundError, ValueError) as error:
        raise common.fail(f"cannot resume: {error}", 2) from None
    vocab = payload["vocab"]
    return {**options, "aromatic_bonds": "aromatic" in vocab["bond_types"], "max_atoms": int(vocab["max_atoms"])}


def training_config(options: dict) -> tuple[TrainConfig, dict | None]:
    """The run's config from ``molgen train``'s options, and the --init-from checkpoint when given;
    an option that contradicts another is one line and exit code 2."""
    from molgen.training.losses import LossWeights
    from molgen.training.trainer import TrainConfig, noise_config

    if options["d_model"] % options["n_heads"]:
        raise common.fail(f"--d-model {options['d_model']} must be a multiple of --n-heads {options['n_heads']}", 2)
    if options["kekule_features"] and not options["self_conditioning"]:
        raise common.fail("--kekule-features reads the self-conditioning estimate: drop --no-self-conditioning", 2)
    if options["kekule_features"] and not options["aromatic_bonds"]:
        raise common.fail("--kekule-features reads aromatic bonds: add --aromatic-bonds", 2)
    model = {name: options[name] for name in ("d_model", "d_pair", "n_layers", "n_heads", "self_conditioning",
                                              "kekule_features")}
    model["d_ff"] = 2 * options["d_model"]
    source = None
    if options["init_from"] is not None:
        with common.exit_codes():
            source = read_checkpoint(options["init_from"])
        # The source's sizes win; the Kekulé features can be added (their weights start at zero).
        kekule = options["kekule_features"] or bool(source["model_config"].get("kekule_features"))
        model = {key: source["model_config"][key] for key in model if key in source["model_config"]}
        model["kekule_features"] = kekule
    config = TrainConfig(
        epochs=options["epochs"], batch_size=options["batch_size"], lr=options["lr"], seed=options["seed"],
        device=options["device"], max_minutes=options["max_minutes"], schedule_minutes=options["schedule_minutes"],
        checkpoint_minutes=options["checkpoint_minutes"], val_molecules=options["val_molecules"], model=model,
        size_bucket_batches=options["size_buckets"],
        loss={**LossWeights().to_dict(), "nll": options["nll_weight"], "consistency": options["consistency_weight"],
              "bond_repair_share": options["bond_repair_share"]},
        noise=noise_config(options["logsnr_max"], options["logsnr_min"]),
    )
    return config, source


def _fit(trainer: Trainer, names: list[str], out: Path) -> None:
    """Run ``trainer`` under a progress bar, an epoch line each, and a closing line."""
    out_console = Console()
    out_console.print(
        f"training {trainer.model.num_parameters():,} parameters on {', '.join(names)} "
        f"({len(trainer.train_rows):,} molecules, {trainer.steps_per_epoch} steps/epoch) -> {out}",
        highlight=False, soft_wrap=True,
    )
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TextColumn("step {task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("[cyan]{task.fields[losses]}"), TimeElapsedColumn(), console=common.console, transient=True,
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


def distribution_source(source: str) -> tuple[str, str]:
    """(name, path) of a DATA argument: 'qm9', 'NAME=FILE', or a file named after its stem."""
    if source == "qm9":
        return "qm9", "qm9"
    name, separator, path = source.partition("=")
    if separator and name and path and not Path(source).exists():
        return name, path
    path = Path(source)
    return (Path(path.stem).stem if path.suffix == ".gz" else path.stem), source


def training_sets(data: List[str], qm9_path: Optional[Path], workers: int, aromatic_bonds: bool) -> tuple[list, list[str]]:
    """Prepared datasets and distribution names for the DATA arguments of train, distill and repair."""
    from molgen.data import locate_qm9, prepare_dataset

    datasets, names = [], []
    with common.exit_codes():
        for source in data:
            name, path = distribution_source(source)
            files = locate_qm9(qm9_path) if path == "qm9" else None
            path, test_idx = (files.csv, files.test_idx) if files else (Path(path), None)
            dataset, _ = prepare_dataset(path, test_idx, workers=workers, aromatic_bonds=aromatic_bonds)
            datasets.append(dataset)
            names.append(name)
    return datasets, names


def fit_on_training_data(
    checkpoint: Path, data: List[str], qm9_path: Optional[Path], workers: int, doing: str,
    fit: Callable[[TrainingData, Callable[[str], None]], dict],
) -> dict:
    """Prepare the training sets ``checkpoint`` was trained on, in its bond vocabulary, and run ``fit``
    on them under a status line (distill, repair)."""
    from molgen.training.data import TrainingData

    with common.exit_codes():
        vocab = Vocabulary.from_dict(read_checkpoint(checkpoint)["vocab"])
    datasets, names = training_sets(data, qm9_path, workers, vocab.aromatic_bonds)
    with common.exit_codes(), common.console.status(doing) as status:
        return fit(TrainingData.combine(datasets, names, vocab.max_atoms), status.update)

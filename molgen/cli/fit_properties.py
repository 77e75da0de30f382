"""``molgen fit-properties``: fit the property head that guidance follows, backbone frozen."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from molgen.cli import common
from molgen.cli.train import fit_on_training_data
from molgen.model.properties import GUIDED_PROPERTIES


def fit_properties(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (RUN/checkpoint.pt, or an export such as qm9.pt)."),
    data: List[str] = common.trained_on_option(),
    qm9_path: Optional[Path] = common.qm9_path_option(),
    output: Optional[Path] = common.in_place_output_option(),
    properties: List[str] = typer.Option(
        list(GUIDED_PROPERTIES), "--property", help="RDKit properties to predict (repeat the option)."),
    molecules: int = typer.Option(50_000, min=100, help="Training molecules whose RDKit properties are the targets."),
    steps: int = typer.Option(3_000, min=1, help="Optimizer steps (the learning rate follows a cosine over them)."),
    minutes: Optional[float] = typer.Option(None, min=0.0, help="Stop earlier when this many minutes are spent."),
    batch_size: int = typer.Option(256, min=1),
    seed: int = typer.Option(0),
    device: str = common.device_option("cpu, cuda, cuda:1, ... (the result is written for CPU)."),
    workers: int = common.workers_option(2, "Worker processes for data preparation and RDKit."),
    threads: Optional[int] = common.threads_option(),
) -> None:
    """Fit a property head (QED, cLogP, TPSA, ...) on the training molecules' RDKit values, so that
    `molgen generate --target` can guide the sampler; everything else in the model stays as it was."""
    from molgen.checks import canonical_property
    from molgen.training.properties import PropertyFitConfig, fit_properties_checkpoint

    common.compute_on(device, threads)
    with common.exit_codes():
        names = tuple(dict.fromkeys(canonical_property(name) for value in properties for name in value.split(",")))
    config = PropertyFitConfig(names=names, molecules=molecules, steps=steps, minutes=minutes, batch_size=batch_size,
                               seed=seed, device=device, workers=workers)
    report = fit_on_training_data(checkpoint, data, qm9_path, workers, "fitting the property head",
                                  lambda training, log: fit_properties_checkpoint(checkpoint, training, config, output, log))
    held_out = report["held_out"]
    shown = [held_out["times"].index(t) for t in (0.0, 0.2, 0.4) if t in held_out["times"]]
    rows = ", ".join(f"{name} " + "/".join(f"{figures['r2'][k]:.2f}" for k in shown)
                     for name, figures in held_out["properties"].items())
    times = " / ".join(f"{held_out['times'][k]:g}" for k in shown)
    Console().print(f"Property head fit in {report['steps']:,} steps ({report['seconds']:.0f} s). Held-out R^2 at "
                    f"t = {times} on {held_out['molecules']:,} molecules: {rows}; written to {output or checkpoint}",
                    highlight=False, soft_wrap=True)

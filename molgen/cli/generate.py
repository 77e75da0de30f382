"""``molgen generate``: sample with the score, filter by density, check with RDKit, rank."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import pandas as pd
import typer
from rdkit import Chem
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from molgen.checkpoint import load_model, model_path
from molgen.cli import common
from molgen.io import TableWriter
from molgen.guidance import parse_targets
from molgen.pipeline import DEFAULT_GUIDANCE_SCALE, GENERATE_MIN_PERCENTILE, GenerateOptions
from molgen.pipeline import generate as run_generate
from molgen.sampler import SamplerSettings

# Rows of the summary table: label, key of the run's statistics.
SUMMARY_ROWS = [("proposed", "proposed"), ("valid without correction", "raw_valid"), ("unique", "unique"),
                ("novel", "novel"), ("no log_density (outside the model's domain)", "unscored"),
                ("thinned to the data's density profile", "thinned"),
                ("passed density", "passed_density"), ("passed checks", "passed_checks"),
                ("passed density and checks", "passed_both")]


def generate(
    n: int = typer.Option(1000, "-n", min=1, help="How many molecules to sample."),
    output: Path = common.output_option(),
    checkpoint: Optional[Path] = common.checkpoint_option(),
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
    batch_size: int = typer.Option(500, min=1),
    device: str = common.device_option("cpu, cuda, ..."),
    distribution: Optional[str] = common.distribution_option("Training distribution to sample ('null' = generic)."),
    num_atoms: Optional[int] = typer.Option(None, min=1, help="Fixed heavy-atom count (default: sampled)."),
    min_percentile: float = typer.Option(
        GENERATE_MIN_PERCENTILE, min=0.0, max=100.0,
        help="Reject samples whose density is below this percentile of held-out molecules (0: no floor; a "
        "checkpoint without calibration fails every floor above 0).",
    ),
    match_profile: bool = typer.Option(
        True, help="Thin the samples where they outnumber the held-out molecules' density profile (above its "
        "median, where the sampler over-produces typical and memorised molecules); the rows say 'thinned'.",
    ),
    no_filter: bool = typer.Option(False, "--no-filter", help="Rank every unique sample; filters only reported."),
    target: List[str] = typer.Option(
        [], help="Guide the sampler towards a property window (repeat for several), e.g. 'qed>=0.6', 'tpsa<=40', "
        "'clogp=1..3'; the model needs a property head (molgen info). The windows are also checked by RDKit: the "
        "on_target column."),
    guidance_scale: float = typer.Option(
        DEFAULT_GUIDANCE_SCALE, min=0.0, help="Weight of the targets' log-likelihood gradient beside the score "
        "(0: unguided, the targets only checked)."),
    prop: List[str] = common.prop_option("qed>=0.4"),
    rule: List[str] = common.rule_option(),
    alerts: str = common.alerts_option(),
    sdf: Optional[Path] = typer.Option(None, help="Also write the ranked molecules, every column a data item, to this SDF."),
    grid: Optional[Path] = typer.Option(None, help="Also draw the top 16 ranked molecules to this PNG."),
    threads: Optional[int] = common.threads_option(),
) -> None:
    """Sample molecules with the score, filter them by density, check them with RDKit, rank them."""
    common.compute_on(device, threads)
    checks = common.check_config(rule, alerts, prop)
    with common.exit_codes():
        targets = parse_targets(target)
        writer = TableWriter(output)
        sdf_writer = TableWriter(sdf, smiles_column="smiles") if sdf is not None else None
        loaded = load_model(model_path(checkpoint, distribution), device=device)
    options = GenerateOptions(
        n=n, seed=seed, batch_size=batch_size, device=device, distribution=distribution, num_atoms=num_atoms,
        sampler=SamplerSettings(steps=steps, corrector_steps=corrector_steps, snr=snr, mala=mala,
                                temperature=temperature),
        min_percentile=min_percentile, match_profile=match_profile, apply_filters=not no_filter, checks=checks,
        targets=targets, guidance_scale=guidance_scale,
    )
    started = time.perf_counter()
    with common.exit_codes(), Progress(
        SpinnerColumn(), TextColumn("sampling"), TextColumn("{task.completed:,.0f}/{task.total:,.0f} molecules"),
        TimeElapsedColumn(), console=common.console, transient=True,
    ) as progress:
        task = progress.add_task("sample", total=n)
        frame, stats = run_generate(loaded, options, lambda done: progress.update(task, completed=done))
    elapsed = time.perf_counter() - started
    writer.write(frame)
    writer.close()
    ranked = frame[frame["rank"].notna()]
    if sdf_writer is not None:
        sdf_writer.write(ranked)
        sdf_writer.close()
    if grid is not None:
        _draw_grid(ranked.head(16), grid)

    out = Console()
    out.print(f"molgen generate: {n} samples -> {output}", highlight=False, soft_wrap=True)
    out.print(_summary(stats, n, elapsed))
    if not stats["calibrated"] and min_percentile > 0 and not no_filter:
        out.print(f"note: the checkpoint has no density calibration for --dist {distribution or loaded.distributions[0]}: "
                  f"density_percentile is empty, so no sample passes --min-percentile {min_percentile:g}; "
                  "--min-percentile 0 ranks them by log_density (`molgen distill` calibrates a checkpoint's training distributions)",
                  highlight=False, soft_wrap=True)


def _summary(stats: dict, n: int, elapsed: float) -> Table:
    table = Table()
    table.add_column("")
    table.add_column("molecules", justify="right")
    table.add_column("share", justify="right")
    for label, key in SUMMARY_ROWS + ([("on target (RDKit)", "on_target")] if "on_target" in stats else []):
        value = stats.get(key)
        if key == "unscored" and not value:
            continue  # the usual case: every sample read by the density head
        table.add_row(label, "n/a" if value is None else f"{value:,}",
                      "" if value is None else f"{100 * value / max(stats['proposed'], 1):.1f}%")
    if stats.get("acceptance_rate") is not None:
        table.add_row("MALA acceptance", "", f"{100 * stats['acceptance_rate']:.1f}%")
    table.add_row("time", f"{elapsed:.1f} s", f"{n / elapsed:,.1f} mol/s")
    return table


def _draw_grid(top: pd.DataFrame, path: Path) -> None:
    from rdkit.Chem import Draw  # needs X rendering libraries that headless servers may lack

    mols = [Chem.MolFromSmiles(s) for s in top["smiles"]]
    legends = [f"#{r} logP {d:.1f}" for r, d in zip(top["rank"], top["log_density"])]
    image = Draw.MolsToGridImage(mols, molsPerRow=4, subImgSize=(250, 200), legends=legends)
    image.save(str(path))

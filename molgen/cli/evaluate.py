"""``molgen evaluate``: generation and density metrics against the QM9 test split."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from molgen import __version__
from molgen.checkpoint import BUNDLED, load_model, model_path
from molgen.cli import common
from molgen.io import read_molecules
from molgen.sampler import SamplerSettings
from molgen.workers import set_threads


def evaluate(
    output: Path = typer.Option(..., "--output", "-o", help="Report JSON."),
    checkpoint: Optional[Path] = common.checkpoint_option(),
    samples: Optional[Path] = typer.Option(
        None, help="Evaluate the molecules of this file (any model's samples) instead of sampling a checkpoint; "
        "its raw_valid column, as `molgen generate` writes it, gives validity without correction. With --dist "
        "moses and --checkpoint, the density metrics are that checkpoint's."
    ),
    smiles_column: Optional[str] = typer.Option(None, help="SMILES column of --samples (default: detected)."),
    n: int = typer.Option(10_000, "-n", min=2, help="Samples to draw (the published tables use 10,000)."),
    seed: int = typer.Option(0),
    draws: int = typer.Option(
        3, min=1, help="Independent draws of -n samples (seeds --seed, --seed + 1, ...) when sampling a checkpoint: "
        "the generation figures are their means, each draw listed beside them. One 10,000-sample validity or "
        "uniqueness near 97% moves by 0.17 points from seed to seed."),
    qm9_path: Optional[Path] = common.qm9_path_option(),
    dist: str = typer.Option(
        "qm9", "--dist", "--distribution", help="The protocol and the distribution sampled: qm9 (the published QM9 "
        "tables) or moses (the MOSES benchmark, on the checkpoint's moses distribution)."),
    moses_path: Optional[Path] = typer.Option(
        None, help="Folder with MOSES's train.csv.gz and test.csv.gz (default: ../shared/data/moses)."),
    density_molecules: int = typer.Option(1000, min=2, help="Test molecules (and their mutants) for density metrics."),
    elbo_samples: int = typer.Option(
        256, min=2, help="Noise levels per ELBO estimate (the yardstick for Spearman and the NLL bound)."
    ),
    temperature: float = typer.Option(1.0, min=0.0, help="Sampler temperature, as in `molgen generate`."),
    steps: int = typer.Option(SamplerSettings().steps, min=2, help="Predictor steps, as in `molgen generate`."),
    threads: Optional[int] = common.threads_option(),
) -> None:
    """Generation and density metrics against the QM9 test split (or MOSES's, --dist moses), with the
    references measured in the same run."""
    set_threads(threads)
    if dist == "moses":
        return _evaluate_moses(output, checkpoint, samples, smiles_column, n, seed, moses_path, density_molecules,
                               elbo_samples, SamplerSettings(steps=steps, temperature=temperature))
    if dist != "qm9":
        raise common.fail(f"--dist {dist!r}: the protocols are qm9 and moses", 2)
    from molgen.evaluation.generation import generation_metrics
    from molgen.evaluation.report import evaluate_discoformer, load_reference_data

    with common.exit_codes():
        if samples is not None and checkpoint is not None:
            raise ValueError("--samples with --checkpoint: the QM9 protocol evaluates one or the other; "
                             "--dist moses takes both (the file's molecules, the checkpoint's density)")
        loaded = load_model(checkpoint) if samples is None else None
        with common.console.status("loading QM9 and building decoys"):
            data = load_reference_data(qm9_path, density_molecules, seed=seed)
        sample_smiles = None
        if samples is not None:
            sample_smiles = [s for chunk in read_molecules(samples, smiles_column=smiles_column) for s in chunk.smiles]
    started = time.perf_counter()
    if samples is None:
        with common.console.status("evaluating") as status:
            sampler = SamplerSettings(steps=steps, temperature=temperature)
            report = evaluate_discoformer(loaded, data, n, seed, elbo_samples, sampler, log=status.update,
                                          draws=draws, name=str(checkpoint or BUNDLED.name))
        report["checkpoint"] = str(checkpoint or "bundled")
    else:
        with common.console.status(f"evaluating {len(sample_smiles):,} molecules of {samples}"):
            report = {"samples_file": str(samples),
                      "generation": generation_metrics(sample_smiles, data.test, set(data.train) | set(data.val))}
    report["settings"] = {"n": n, "seed": seed, "draws": draws if samples is None else 1,
                          "density_molecules": density_molecules, "elbo_samples": elbo_samples}
    report["molgen_version"] = __version__
    report["seconds"] = time.perf_counter() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    Console().print(report_table(report), soft_wrap=True)


def _evaluate_moses(output: Path, checkpoint: Optional[Path], samples: Optional[Path], smiles_column: Optional[str],
                    n: int, seed: int, moses_path: Optional[Path], density_molecules: int, elbo_samples: int,
                    sampler: SamplerSettings) -> None:
    from molgen.evaluation.moses_report import evaluate_moses, load_moses_reference, locate_moses

    with common.exit_codes():
        folder = locate_moses(moses_path)
        # --samples alone: the file's molecules only; with --checkpoint as well, that model's density too.
        loaded = None
        if samples is None or checkpoint is not None:
            checkpoint = model_path(checkpoint, "moses")
            loaded = load_model(checkpoint)
        if loaded is not None and "moses" not in loaded.distributions:
            raise ValueError(f"{checkpoint.name} has no moses distribution (it has "
                             f"{', '.join(loaded.distributions)}): evaluate a drug-like checkpoint, or --samples FILE")
        sample_smiles = raw_valid = None
        if samples is not None:
            sample_smiles, raw_valid = read_samples(samples, smiles_column)
    started = time.perf_counter()
    with common.console.status("evaluating") as status:
        data, statistics = load_moses_reference(folder, density_molecules, seed, log=status.update)
        report = evaluate_moses(loaded, data, statistics, n, seed, elbo_samples, sampler, samples=sample_smiles,
                                samples_raw_valid=raw_valid, log=status.update)
    if samples is not None:
        report["samples_file"] = str(samples)
    if loaded is not None:
        report["checkpoint"] = str(checkpoint)
    report["settings"] = {"dist": "moses", "n": n, "seed": seed, "density_molecules": density_molecules,
                          "elbo_samples": elbo_samples}
    report["molgen_version"] = __version__
    report["seconds"] = time.perf_counter() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    Console().print(moses_table(report), soft_wrap=True)


def read_samples(path: Path, smiles_column: Optional[str]) -> tuple[list[str | None], list[bool] | None]:
    """The SMILES of a samples file and, where it has molgen generate's ``raw_valid`` column, whether each
    sample was a molecule before the constrained decode (None without that column)."""
    smiles: list[str | None] = []
    raw_valid: list[bool] | None = []
    for chunk in read_molecules(path, smiles_column=smiles_column):
        smiles += chunk.smiles
        if raw_valid is not None and "raw_valid" in chunk.frame:
            flags = chunk.frame["raw_valid"].str.strip().str.lower()
            unreadable = ~flags.isin(["true", "false"])
            if unreadable.any():
                row = int(flags.index[unreadable][0])
                raise ValueError(f"{path}: row {row}: raw_valid is {chunk.frame['raw_valid'][row]!r}, not True or False")
            raw_valid += (flags == "true").tolist()
        else:
            raw_valid = None
    return smiles, raw_valid


MOSES_ROWS = [("valid (after correction)", "valid", "percent"), ("valid without correction", "valid_without_correction",
              "percent"), ("unique@1k", "unique@1000", "percent"), ("unique@10k", "unique@10000", "percent"),
              ("novelty", "novelty", "percent"), ("filters", "filters", "percent"), ("FCD/Test", "fcd_test", "number"),
              ("SNN/Test", "snn_test", "number"), ("Frag/Test", "frag_test", "number"),
              ("Scaf/Test", "scaf_test", "number"), ("IntDiv", "int_div", "number"), ("IntDiv2", "int_div2", "number")]


def moses_table(report: dict) -> Table:
    """The MOSES figures of the samples beside the random-train floor."""
    table = Table(title="molgen evaluate --dist moses (MOSES test split)")
    table.add_column("")
    table.add_column("samples", justify="right")
    table.add_column("train sample", justify="right")
    for label, key, kind in MOSES_ROWS:
        show = _percent if kind == "percent" else _number
        table.add_row(label, show(report["generation"].get(key)), show(report["reference_train_sample"].get(key)))
    density = report.get("density")
    if density:
        knn = report["reference_knn_tanimoto"]
        table.add_row("AUROC log_density vs mutants", _number(density["log_density"].get("auroc_vs_mutants")),
                      f"kNN {_number(knn.get('auroc_vs_mutants'))}")
        table.add_row("calibration: share below 5th percentile", _percent(density["calibration_test"]["share_below_5th"]), "")
    table.add_row("time", f"{report['seconds']:.0f} s", "")
    return table


def _percent(value, digits=1):
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _fine_percent(value):  # validity and uniqueness: their bars are decided by tenths of a point
    return _percent(value, 2)


def _number(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(bounds):
    return "n/a" if bounds is None else f"{bounds[0]:.3f} to {bounds[1]:.3f}"


def report_table(report: dict) -> Table:
    table = Table(title="molgen evaluate (QM9 test split)", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    generation = report["generation"]
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
        ("validity without correction", mean_and_draws("validity_without_correction", _fine_percent)),
        ("validity", _percent(generation["validity"])),
        ("uniqueness", mean_and_draws("uniqueness", _fine_percent)),
        ("novelty", mean_and_draws("novelty", _percent)),
        ("FCD vs test", mean_and_draws("fcd_test", _number)),
        ("NSPDK MMD vs test", _number(generation.get("nspdk_mmd_test"), 4)),
        ("KL score (GuacaMol)", _number((generation.get("kl_test") or {}).get("score"))),
        ("internal diversity", _number(generation["internal_diversity"])),
    ]
    density = report.get("density")
    if density:
        nll = density["nll_bound_test"]
        knn = report["reference_knn_tanimoto"]
        rows += [
            ("NLL bound, test (nats)", f"{nll['mean']:.2f} ± {nll['stderr']:.2f}"),
            ("Spearman(D, ELBO)", _number(density["spearman_density_elbo"])),
            ("  ELBO repeatability (ceiling)", _number(density["elbo_repeatability_spearman"])),
            ("Spearman(D, mean of both ELBOs)", _number(density.get("spearman_density_elbo_pooled"))),
            ("  against the exact ELBO (corrected)", _number(density.get("spearman_density_elbo_corrected"))),
            ("  95% bootstrap interval over molecules", _interval(density.get("spearman_density_elbo_corrected_interval"))),
            ("AUROC log_density vs mutants", _number(density["log_density"].get("auroc_vs_mutants"))),
            ("  kNN-Tanimoto reference", _number(knn.get("auroc_vs_mutants"))),
            ("AUROC log_density vs drug-like", _number(density["log_density"].get("auroc_vs_druglike"))),
            ("  kNN-Tanimoto reference", _number(knn.get("auroc_vs_druglike"))),
            ("calibration: share below 5th percentile", _percent(density["calibration_test"]["share_below_5th"])),
            ("calibration: KS distance to uniform", _number(density["calibration_test"]["ks_distance"])),
        ]
        by_size = density.get("by_heavy_atoms") or []
        if by_size:
            weakest = min(by_size, key=lambda row: row["spearman"])
            rows.append(("Spearman(D, ELBO), weakest size", f"{_number(weakest['spearman'])} ({weakest['group']} atoms, "
                                                            f"{weakest['count']} molecules)"))
        if density.get("highest_test"):
            top = density["highest_test"][0]
            rows.append(("highest log_density, test", f"{top['log_density']:.2f} ({top['smiles']})"))
    rows.append(("time", f"{report['seconds']:.0f} s"))
    for label, value in rows:
        table.add_row(label, value)
    return table

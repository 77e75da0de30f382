"""The evaluation report shared by ``molgen evaluate`` and ``benchmarks/run_all.py``: the QM9
protocol of the published tables (10,000 samples against the test split) plus density metrics on
test molecules and decoys, for the DiScoFormer and for any reference model in the same harness."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from molgen.baselines.knn import TanimotoKNN
from molgen.checkpoint import BUNDLED, LoadedModel, ModelCard
from molgen.data import locate_qm9, prepare_dataset
from molgen.mutants import single_edit_mutants
from molgen.chemistry import parse_smiles
from molgen.stats import (
    agreement_by_group,
    auroc,
    calibration,
    mean_with_stderr,
    spearman,
    spearman_against_exact,
    spearman_against_exact_interval,
)
from molgen.evaluation.generation import generation_metrics
from molgen.io import read_molecules
from molgen.pipeline import GenerateOptions, sample_molecules
from molgen.sampler import SamplerSettings
from molgen.scoring import Scorer

Log = Callable[[str], None]


@dataclass
class ReferenceData:
    """Canonical SMILES of the QM9 splits, plus decoys built from them and from a drug-like file."""

    train: list[str]
    val: list[str]
    test: list[str]
    density_test: list[str]  # the test molecules the density metrics use
    mutants: list[str]  # single-edit mutants of ``density_test`` that are not in QM9
    mutant_edits: dict[str, int]
    druglike: list[str]  # drug-like molecules (MOSES test), empty when the file is absent
    druglike_source: str | None


def load_reference_data(
    qm9_path: str | Path | None = None, density_molecules: int = 1000, druglike: str | Path | None = None,
    seed: int = 0,
) -> ReferenceData:
    files = locate_qm9(qm9_path)
    dataset, _ = prepare_dataset(files.csv, files.test_idx)
    smiles = dataset.smiles.astype(str)
    train, val, test = (smiles[dataset.indices(split)].tolist() for split in ("train", "val", "test"))
    rng = np.random.default_rng(seed)
    density_test = [test[i] for i in np.sort(rng.permutation(len(test))[:density_molecules])]
    mutants = [m for m in single_edit_mutants(density_test, set(smiles.tolist()), seed=seed) if m is not None]
    edits = {str(k): int(v) for k, v in pd.Series([m.edit for m in mutants], dtype=object).value_counts().items()}
    druglike_path = Path(druglike) if druglike else files.csv.parent / "moses" / "test.csv.gz"
    druglike_smiles: list[str] = []
    if druglike_path.is_file():
        prefix = [s for s in next(read_molecules(druglike_path, chunk_size=50_000)).smiles if s]  # plenty to sample
        druglike_smiles = [prefix[i] for i in np.sort(rng.permutation(len(prefix))[:density_molecules])]
    return ReferenceData(
        train, val, test, density_test, [m.smiles for m in mutants], edits,
        druglike_smiles, str(druglike_path) if druglike_smiles else None,
    )


def _rejected_lowest(scores: np.ndarray) -> np.ndarray:
    """Scores with NaN (a molecule the scorer cannot take) mapped to -inf: rejected outright."""
    return np.where(np.isnan(scores), -np.inf, scores)


def decoy_sets(data: ReferenceData) -> dict[str, list[str]]:
    """The non-empty decoy sets by name."""
    return {name: decoys for name, decoys in (("mutants", data.mutants), ("druglike", data.druglike)) if decoys}


def decoy_aurocs(test: np.ndarray, decoys: dict[str, np.ndarray]) -> dict:
    """AUROC of higher-is-more-likely scores of the test molecules against each decoy set's, with
    the share of each set the scorer could not take (NaN, scored as -inf)."""
    out = {"test_unscorable": float(np.isnan(test).mean())}
    for name, values in decoys.items():
        out[f"auroc_vs_{name}"] = auroc(_rejected_lowest(test), _rejected_lowest(values))
        out[f"{name}_unscorable"] = float(np.isnan(values).mean())
    return out


def discoformer_density(loaded: LoadedModel, data: ReferenceData, elbo_samples: int = 256, seed: int = 0,
                        distribution: str | None = None) -> dict:
    """NLL bound on test molecules, Spearman(D, ELBO) beside the ELBO's own repeatability, decoy
    AUROCs of D and of the ELBO, and calibration of density percentiles over the whole test split,
    under ``distribution`` (default: the model's first)."""
    exact = Scorer(loaded, distribution, exact=True, exact_samples=elbo_samples, seed=seed)
    first = exact.score_smiles(data.density_test)
    second = Scorer(loaded, distribution, exact=True, exact_samples=elbo_samples,
                    seed=seed + 1).score_smiles(data.density_test)
    nll, second_elbo = -first["elbo_nats"].to_numpy(), second["elbo_nats"].to_numpy()
    scorable = ~np.isnan(nll)  # all of QM9 for a QM9 model; a model of other data may reject some
    mutants = exact.score_smiles(data.mutants)
    plain = Scorer(loaded, distribution)
    started = time.perf_counter()
    whole_test = plain.score_smiles(data.test)
    scoring_rate = len(data.test) / (time.perf_counter() - started)
    density = first["log_density"].to_numpy()
    repeatability = spearman(-nll, second_elbo)
    pooled = spearman(density, (second_elbo - nll) / 2)
    decoy_density = {"mutants": mutants["log_density"].to_numpy()}
    if data.druglike:
        decoy_density["druglike"] = plain.score_smiles(data.druglike)["log_density"].to_numpy()
    return {
        "elbo_samples": elbo_samples,
        "nll_bound_test": mean_with_stderr(nll[scorable], first["elbo_stderr"].to_numpy()[scorable]),
        "spearman_density_elbo": spearman(density, -nll),
        "elbo_repeatability_spearman": repeatability,
        # Both estimates averaged (twice the levels): a less noisy yardstick for the head.
        "spearman_density_elbo_pooled": pooled,
        # What the bar is about: the head against the model's exact ELBO, which no finite estimate is.
        "spearman_density_elbo_corrected": spearman_against_exact(pooled, repeatability, estimates=2),
        # ... and how far another draw of as many molecules could move it (95% bootstrap interval).
        "spearman_density_elbo_corrected_interval": spearman_against_exact_interval(density, -nll, second_elbo,
                                                                                     seed=seed),
        "log_density": decoy_aurocs(density, decoy_density),
        "elbo_auroc_vs_mutants": auroc(_rejected_lowest(-nll), _rejected_lowest(mutants["elbo_nats"].to_numpy())),
        "calibration_test": calibration(whole_test["density_percentile"].to_numpy()),
        # Where the head agrees with the ELBO, size by size, and what it puts highest.
        "by_heavy_atoms": agreement_by_group(density[scorable], -nll[scorable],
                                             np.array([heavy_atoms(s) for s in data.density_test])[scorable]),
        "highest_test": highest(data.test, whole_test["log_density"].to_numpy()),
        "scoring_molecules_per_second_in_process": scoring_rate,
    }


def heavy_atoms(smiles: str) -> int:
    mol = parse_smiles(smiles)
    return mol.GetNumHeavyAtoms() if mol is not None else 0


def highest(smiles: list[str], log_density: np.ndarray, count: int = 10) -> list[dict]:
    """The ``count`` molecules with the highest ``log_density``, highest first."""
    order = np.argsort(-np.nan_to_num(log_density, nan=-np.inf), kind="stable")[:count]
    return [{"smiles": smiles[i], "log_density": float(log_density[i])} for i in order]


def knn_reference(data: ReferenceData, k: int = 5) -> dict:
    started = time.perf_counter()
    knn = TanimotoKNN(data.train, k=k)
    decoys = {name: knn.score(smiles) for name, smiles in decoy_sets(data).items()}
    return {"k": k, **decoy_aurocs(knn.score(data.density_test), decoys), "seconds": time.perf_counter() - started}


# The figures each draw of a multi-draw evaluation lists beside the mean (``generation["draws"]``).
DRAW_FIGURES = ("validity_without_correction", "uniqueness", "novelty", "fcd_test", "nspdk_mmd_test",
                "internal_diversity", "sampling_molecules_per_second")


def sampled_generation(
    loaded: LoadedModel, data: ReferenceData, n: int, seed: int, sampler: SamplerSettings, log: Log,
) -> dict:
    """Generation metrics of ``n`` molecules sampled with ``sampler`` under ``seed``, and the sampling speed."""
    log(f"sampling {n:,} molecules (seed {seed})")
    started = time.perf_counter()
    frame, _ = sample_molecules(loaded, GenerateOptions(n=n, seed=seed, sampler=sampler))
    sampling_seconds = time.perf_counter() - started
    log(f"generation metrics of seed {seed} (FCD, NSPDK, KL)")
    generation = generation_metrics(
        frame["smiles"].tolist(), data.test, set(data.train) | set(data.val), frame["raw_valid"].tolist()
    )
    generation["sampling_molecules_per_second"] = n / sampling_seconds
    return generation


def mean_over_draws(draws: list[dict]) -> dict:
    """Several draws' generation metrics as one: each number (nested ones too) their mean, None where
    any draw has None, and anything the draws share (sample count, settings) as it is."""
    return _mean_of_values(draws)


def _mean_of_values(values: list):
    first = values[0]
    if isinstance(first, dict):
        return {key: _mean_of_values([value[key] for value in values]) for key in first}
    if all(value == first for value in values):
        return first
    if any(value is None for value in values):
        return None
    return float(np.mean(values))


def evaluate_discoformer(
    loaded: LoadedModel, data: ReferenceData, n: int = 10_000, seed: int = 0, elbo_samples: int = 256,
    sampler: SamplerSettings = SamplerSettings(), log: Log = lambda message: None, draws: int = 1,
    name: str = BUNDLED.name,
) -> dict:
    """The full report of one checkpoint: generation metrics on ``n`` samples drawn with ``sampler``
    (default: the settings `molgen generate` uses), density metrics, and the kNN-Tanimoto reference
    on the same decoys. With ``draws`` > 1 the generation metrics are the means of that many
    independent draws of ``n`` (seeds ``seed``, ``seed + 1``, ...), each listed under "draws": one
    10,000-sample validity or uniqueness near 97% moves by 0.17 points (binomial standard error)
    from seed to seed. ``name`` names the checkpoint on the report's model card."""
    per_draw = [sampled_generation(loaded, data, n, seed + k, sampler, log) for k in range(draws)]
    generation = mean_over_draws(per_draw)
    generation["draws"] = [{"seed": seed + k, **{key: draw[key] for key in DRAW_FIGURES},
                            "kl_score": (draw.get("kl_test") or {}).get("score")} for k, draw in enumerate(per_draw)]
    generation["sampler"] = sampler.to_dict()
    log(f"density metrics ({len(data.density_test):,} test molecules, {elbo_samples} ELBO levels)")
    density = discoformer_density(loaded, data, elbo_samples, seed)
    log("kNN-Tanimoto reference")
    return {
        "model": asdict(ModelCard.of(loaded, name)),
        "generation": generation,
        "density": density,
        "reference_knn_tanimoto": knn_reference(data),
        "decoys": decoy_summary(data),
    }


def decoy_summary(data: ReferenceData) -> dict:
    return {"test_molecules": len(data.density_test), "mutants": len(data.mutants),
            "mutant_edits": data.mutant_edits, "druglike": len(data.druglike),
            "druglike_source": data.druglike_source}


def floor_reference(data: ReferenceData, n: int = 10_000, seed: int = 0) -> dict:
    """``n`` training molecules drawn at random with replacement, scored as if generated: what a
    perfect generator of the training set reaches. Drawn with replacement because a generator's
    samples are independent: such a sampler repeats itself (10,000 draws from QM9's 114,763 training
    molecules, about 4% repeats), so uniqueness has a ceiling below 100% for any model that fits the data."""
    rng = np.random.default_rng(seed)
    sample = [data.train[i] for i in rng.integers(0, len(data.train), n)]
    return generation_metrics(sample, data.test, set(data.train) | set(data.val))




def headline_figures(report: dict) -> dict:
    """The figures a checkpoint's card carries, as plain values, from a ``molgen evaluate`` report."""
    generation, density = report["generation"], report["density"]
    return {
        "evaluated_samples": generation["samples"],
        "evaluated_draws": len(generation.get("draws", [])) or 1,  # figures below: the draws' means
        "validity_without_correction": generation["validity_without_correction"],
        "uniqueness": generation["uniqueness"],
        "novelty": generation["novelty"],
        "fcd_test": generation["fcd_test"],
        "nspdk_mmd_test": generation["nspdk_mmd_test"],
        "kl_score_test": (generation.get("kl_test") or {}).get("score"),
        "nll_bound_test_nats": density["nll_bound_test"]["mean"],
        "spearman_density_elbo": density["spearman_density_elbo"],
        "spearman_density_elbo_pooled": density.get("spearman_density_elbo_pooled"),
        "spearman_density_elbo_corrected": density.get("spearman_density_elbo_corrected"),
        "spearman_density_elbo_corrected_interval": density.get("spearman_density_elbo_corrected_interval"),
        "auroc_vs_mutants": density["log_density"].get("auroc_vs_mutants"),
        "auroc_vs_mutants_knn_tanimoto": report["reference_knn_tanimoto"].get("auroc_vs_mutants"),
        "share_below_5th_percentile_test": density["calibration_test"]["share_below_5th"],
        "sampling_molecules_per_second": generation.get("sampling_molecules_per_second"),
    }

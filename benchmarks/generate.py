"""Generation speed and the density filter's effect, beside the random-train-sample floor.

    python benchmarks/generate.py [--checkpoint PATH] [-n 10000] [--seeds 3] [--speed-n 500] [--repeats 3]

Speed: molecules/s of the whole `generate` pipeline at default settings (sampling, decoding,
density, RDKit checks), median of ``--repeats`` runs of ``--speed-n`` molecules, and of sampling
alone. Filter, for each of ``--seeds`` draws of ``-n`` samples: the share the default density filter
keeps (generate's floor, and the samples thinned to the data's density profile above its median) and
FCD of the kept and of the rejected samples, each beside a random subset of all samples of the same
size (FCD depends on sample size, so the random subsets are the reference), against the QM9 test
split, against the test molecules above the same floor, and against those above the 5th percentile
(the old threshold's population); the same for the old 5th-percentile threshold alone; the floor: FCD
of as many random training molecules. And the samples' density profile: the test molecules' log_density cut into 20
equal-count bins, the share of samples in each bin over the test's 5% (1.0 everywhere for a sampler
whose density profile is the data's).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from _common import median_rate, qm9_split, write_results

from molgen.checkpoint import load_model
from molgen.evaluation.generation import (activation_statistics, canonicalize, chemnet_activations,
                                          frechet_distance_of_statistics)
from molgen.pipeline import GENERATE_MIN_PERCENTILE, GenerateOptions, generate, sample_molecules
from molgen.scoring import DEFAULT_MIN_PERCENTILE, Scorer

BINS = 20  # equal-count bins of the test molecules' log_density
RANDOM_SUBSETS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=3, help="Draws of -n samples (seeds --seed + 1, + 2, ...).")
    parser.add_argument("--speed-n", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    options = GenerateOptions(n=args.speed_n, seed=args.seed)
    pipeline_rate, pipeline_runs = median_rate(lambda: len(generate(loaded, options)[0]), args.repeats)
    sampling_rate, sampling_runs = median_rate(lambda: len(sample_molecules(loaded, options)[0]), args.repeats)

    train, test = qm9_split()
    train = pd.Series(train)
    test_scores = Scorer(loaded).score_smiles(test)
    test_density = test_scores["log_density"].to_numpy()
    test_percentile = test_scores["density_percentile"].to_numpy()
    edges = np.quantile(test_density, np.linspace(0, 1, BINS + 1))
    # ChemNet activations of each molecule once; every set's statistics come from its rows of them.
    test_activations = activations(test)
    references = {
        "test": activation_statistics(test_activations),
        "test_above_the_floor": activation_statistics(test_activations[test_percentile >= GENERATE_MIN_PERCENTILE]),
        "test_above_p5": activation_statistics(test_activations[test_percentile >= DEFAULT_MIN_PERCENTILE]),
    }
    draws = [filter_effect(loaded, args.n, args.seed + 1 + k, train, references, edges) for k in range(args.seeds)]
    payload = {
        "checkpoint": args.checkpoint or "bundled",
        "torch_threads": torch.get_num_threads(),
        "pipeline_molecules_per_second": pipeline_rate,
        "pipeline_runs": pipeline_runs,
        "sampling_molecules_per_second": sampling_rate,
        "sampling_runs": sampling_runs,
        "samples": args.n,
        "test_molecules_above_the_floor": int((test_percentile >= GENERATE_MIN_PERCENTILE).sum()),
        "test_molecules_above_p5": int((test_percentile >= DEFAULT_MIN_PERCENTILE).sum()),
        "density_bin_edges_test": edges.tolist(),
        "draws": draws,
    }
    def each(value) -> str:
        return " / ".join(value(draw) for draw in draws)

    rows = [
        ("pipeline speed (mol/s, median)", f"{pipeline_rate:.1f}"),
        ("sampling speed (mol/s, median)", f"{sampling_rate:.1f}"),
        ("seeds", each(lambda d: str(d["seed"]))),
        ("validity without correction", each(lambda d: f"{100 * d['validity_without_correction']:.1f}%")),
        ("uniqueness", each(lambda d: f"{100 * d['uniqueness']:.1f}%")),
    ] + [(f"{rule}: kept", each(lambda d, rule=rule: f"{100 * d['rules'][rule]['kept_share']:.1f}%"))
         for rule in draws[0]["rules"]] + [
        (f"{rule}: FCD vs {reference.replace('_', ' ')}, {part} / random subset of its size",
         each(lambda d, rule=rule, reference=reference, part=part: "{} / {}".format(
             *(_show(d["rules"][rule]["fcd"][reference][key]) for key in (part, f"random_{part}")))))
        for rule in draws[0]["rules"] for reference in draws[0]["rules"][rule]["fcd"] for part in ("kept", "rejected")
    ] + [
        ("FCD vs test: all unique samples", each(lambda d: _show(d["fcd_all_unique"]))),
        ("FCD vs test: floor, as many random training molecules", each(lambda d: _show(d["fcd_floor"]))),
        ("samples' mass over the test's in the lowest, highest density bin",
         each(lambda d: f"{d['density_profile'][0]:.2f}x, {d['density_profile'][-1]:.2f}x")),
        ("largest excess over the 20 bins", each(lambda d: f"{max(d['density_profile']):.2f}x")),
    ]
    write_results(f"generate_{args.tag}", payload, rows, ("generate", "value per seed"))


def _median(values: list) -> float | None:
    return None if any(v is None for v in values) else float(np.median(values))


def _show(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def activations(smiles: list[str]) -> np.ndarray:
    """ChemNet activations of each molecule, read as RDKit canonical SMILES (the published FCD
    protocol: ChemNet reads the string); every input must be valid."""
    canonical = canonicalize(smiles)
    assert all(s is not None for s in canonical)
    return chemnet_activations(canonical)


def distance(rows: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float | None:
    return frechet_distance_of_statistics(activation_statistics(rows), reference) if len(rows) > 1 else None


def filter_effect(loaded, n: int, seed: int, train: pd.Series, references: dict, edges: np.ndarray) -> dict:
    """One draw of ``n`` samples: what each density rule keeps, FCD of kept and rejected beside random
    subsets of the same sizes against each reference, and the samples' share per test density bin
    over the test's."""
    started = time.perf_counter()
    frame, stats = generate(loaded, GenerateOptions(n=n, seed=seed))
    seconds = time.perf_counter() - started
    unique = frame[frame["unique"]].reset_index(drop=True)
    sample_activations = activations(unique["smiles"].tolist())
    rng = np.random.default_rng(seed)
    rules = {
        "default (floor and profile)": unique["passed_density"].to_numpy(),
        "5th-percentile threshold": (unique["density_percentile"] >= DEFAULT_MIN_PERCENTILE).to_numpy(),
    }
    effects = {}
    for rule, kept in rules.items():
        # A random subset's FCD varies by about 0.01 from draw to draw: the median of RANDOM_SUBSETS.
        subsets = {f"random_{part}": [rng.permutation(len(unique))[:size] for _ in range(RANDOM_SUBSETS)]
                   for part, size in (("kept", kept.sum()), ("rejected", (~kept).sum()))}
        effects[rule] = {
            "kept_share": float(kept.mean()),
            "kept": int(kept.sum()),
            "fcd": {reference: {
                "kept": distance(sample_activations[kept], statistics_),
                "rejected": distance(sample_activations[~kept], statistics_),
                **{part: _median([distance(sample_activations[rows], statistics_) for rows in draws])
                   for part, draws in subsets.items()},
            } for reference, statistics_ in references.items()},
        }
    density = frame["log_density"].dropna().to_numpy()
    counts = np.histogram(np.clip(density, edges[0], edges[-1]), bins=edges)[0]
    floor = train.sample(len(unique), random_state=seed).tolist()
    return {
        "seed": seed,
        "seconds": seconds,
        "stats": stats,
        "validity_without_correction": stats["raw_valid"] / stats["proposed"],
        "uniqueness": stats["unique"] / stats["proposed"],
        "rules": effects,
        "fcd_all_unique": distance(sample_activations, references["test"]),
        "fcd_floor": distance(activations(floor), references["test"]),
        "density_profile": (counts / max(counts.sum(), 1) * BINS).tolist(),  # 1.0: the test's own share
    }


if __name__ == "__main__":
    main()

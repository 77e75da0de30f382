"""Generation speed and the density filter's effect, beside the random-train-sample floor.

    python benchmarks/generate.py [--checkpoint PATH] [-n 10000] [--seeds 3] [--speed-n 500] [--repeats 3]

Speed: molecules/s of the whole `generate` pipeline at default settings (sampling, decoding,
density, RDKit checks), median of ``--repeats`` runs of ``--speed-n`` molecules, and of sampling
alone. Filter, for each of ``--seeds`` draws of ``-n`` samples: the share the density filter keeps
(5th percentile by default) and FCD of the kept and of the rejected samples, each beside a random
subset of all samples of the same size (FCD depends on sample size), against the QM9 test split and
against the test molecules that pass the same threshold; the floor: FCD of as many random training
molecules. And the samples' density profile: the test molecules' log_density cut into 20
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
from molgen.evaluation.generation import canonicalize, chemnet_statistics, frechet_distance
from molgen.pipeline import GenerateOptions, generate, sample_molecules
from molgen.scoring import DEFAULT_MIN_PERCENTILE, Scorer, passes_density

BINS = 20  # equal-count bins of the test molecules' log_density


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
    test_kept = [s for s, passed in zip(test, passes_density(test_scores["density_percentile"], DEFAULT_MIN_PERCENTILE))
                 if passed]
    edges = np.quantile(test_density, np.linspace(0, 1, BINS + 1))
    # ChemNet statistics of each reference once; every sample set is compared with them.
    references = {"test": chemnet_statistics(canonical(test)), "test_passing_the_threshold": chemnet_statistics(canonical(test_kept))}
    draws = [filter_effect(loaded, args.n, args.seed + 1 + k, train, references, edges) for k in range(args.seeds)]
    payload = {
        "checkpoint": args.checkpoint or "bundled",
        "torch_threads": torch.get_num_threads(),
        "pipeline_molecules_per_second": pipeline_rate,
        "pipeline_runs": pipeline_runs,
        "sampling_molecules_per_second": sampling_rate,
        "sampling_runs": sampling_runs,
        "samples": args.n,
        "test_molecules_passing_the_threshold": len(test_kept),
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
        ("kept by density filter", each(lambda d: f"{100 * d['kept_by_density_filter']:.1f}%")),
    ] + [(f"FCD vs {name.replace('_', ' ')}", each(lambda d, name=name: _show(d["fcd"][name])))
         for name in draws[0]["fcd"]] + [
        ("samples' mass over the test's in the lowest, highest density bin",
         each(lambda d: f"{d['density_profile'][0]:.2f}x, {d['density_profile'][-1]:.2f}x")),
        ("largest excess over the 20 bins", each(lambda d: f"{max(d['density_profile']):.2f}x")),
    ]
    write_results(f"generate_{args.tag}", payload, rows, ("generate", "value per seed"))


def _show(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def canonical(smiles: list[str]) -> list[str]:
    """RDKit canonical SMILES (the published FCD protocol: ChemNet reads the string), invalid ones dropped."""
    return [s for s in canonicalize(smiles) if s is not None]


def distance(smiles: list[str], statistics: tuple[np.ndarray, np.ndarray]) -> float:
    return frechet_distance(canonical(smiles), *statistics)


def filter_effect(loaded, n: int, seed: int, train: pd.Series, references: dict, edges: np.ndarray) -> dict:
    """One draw of ``n`` samples: what the density filter keeps, FCD of kept and rejected beside random
    subsets of the same sizes (against all test molecules and those passing the threshold), and the
    samples' share per test density bin over the test's."""
    started = time.perf_counter()
    frame, stats = generate(loaded, GenerateOptions(n=n, seed=seed))
    seconds = time.perf_counter() - started
    unique = frame[frame["unique"]]
    kept, rejected = unique[unique["passed_density"]], unique[~unique["passed_density"]]
    rng = np.random.default_rng(seed)

    def random_subset(size: int) -> list[str]:
        return unique["smiles"].iloc[rng.permutation(len(unique))[:size]].tolist()

    random_kept, random_rejected = random_subset(len(kept)), random_subset(len(rejected))
    sets = {"all_unique": unique["smiles"].tolist(), "kept": kept["smiles"].tolist(),
            "random_subset_size_of_kept": random_kept, "rejected": rejected["smiles"].tolist(),
            "random_subset_size_of_rejected": random_rejected}
    fcd = {f"{reference}:{name}": (distance(smiles, statistics) if len(smiles) > 1 else None)
           for reference, statistics in references.items() for name, smiles in sets.items()}
    fcd["test:floor_random_train_same_size"] = distance(train.sample(len(unique), random_state=seed).tolist(),
                                                        references["test"])
    density = frame["log_density"].dropna().to_numpy()
    counts = np.histogram(np.clip(density, edges[0], edges[-1]), bins=edges)[0]
    return {
        "seed": seed,
        "seconds": seconds,
        "stats": stats,
        "validity_without_correction": stats["raw_valid"] / stats["proposed"],
        "uniqueness": stats["unique"] / stats["proposed"],
        "kept_by_density_filter": len(kept) / max(len(unique), 1),
        "kept": len(kept),
        "rejected": len(rejected),
        "fcd": fcd,
        "density_profile": (counts / max(counts.sum(), 1) * BINS).tolist(),  # 1.0: the test's own share
    }


if __name__ == "__main__":
    main()

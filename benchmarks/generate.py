"""Generation speed and the density filter's effect, beside the random-train-sample floor.

    python benchmarks/generate.py [--checkpoint PATH] [-n 5000] [--speed-n 500] [--repeats 3]

Speed: molecules/s of the whole `generate` pipeline at default settings (sampling, decoding,
density, RDKit checks), median of ``--repeats`` runs of ``--speed-n`` molecules, and of sampling
alone. Filter: of ``-n`` samples, the share the density filter keeps (5th percentile by default)
and FCD against the QM9 test split of the kept and of the rejected samples, each beside a random
subset of all samples of the same size (FCD depends on sample size), and the floor: FCD of as many
random training molecules.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from _common import fcd_score, median_rate, qm9_split, write_results

from molgen.checkpoint import load_model
from molgen.pipeline import GenerateOptions, generate, sample_molecules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--speed-n", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    options = GenerateOptions(n=args.speed_n, seed=args.seed)
    pipeline_rate, pipeline_runs = median_rate(lambda: len(generate(loaded, options)[0]), args.repeats)
    sampling_rate, sampling_runs = median_rate(lambda: len(sample_molecules(loaded, options)[0]), args.repeats)

    started = time.perf_counter()
    frame, stats = generate(loaded, GenerateOptions(n=args.n, seed=args.seed + 1))
    seconds = time.perf_counter() - started
    unique = frame[frame["unique"]]
    kept, rejected = unique[unique["passed_density"]], unique[~unique["passed_density"]]

    train, test = qm9_split()
    train = pd.Series(train)
    rng = np.random.default_rng(args.seed)

    def random_subset(size: int) -> list[str]:
        return unique["smiles"].iloc[rng.permutation(len(unique))[:size]].tolist()

    fcd = {
        "all_unique": fcd_score(unique["smiles"].tolist(), test),
        "kept": fcd_score(kept["smiles"].tolist(), test),
        "random_subset_size_of_kept": fcd_score(random_subset(len(kept)), test),
        "rejected": fcd_score(rejected["smiles"].tolist(), test) if len(rejected) > 1 else None,
        "random_subset_size_of_rejected": fcd_score(random_subset(len(rejected)), test) if len(rejected) > 1 else None,
        "floor_random_train_same_size": fcd_score(train.sample(len(unique), random_state=args.seed).tolist(), test),
    }
    payload = {
        "checkpoint": args.checkpoint or "bundled",
        "torch_threads": torch.get_num_threads(),
        "pipeline_molecules_per_second": pipeline_rate,
        "pipeline_runs": pipeline_runs,
        "sampling_molecules_per_second": sampling_rate,
        "sampling_runs": sampling_runs,
        "samples": args.n,
        "seconds_for_samples": seconds,
        "stats": stats,
        "validity_without_correction": stats["raw_valid"] / stats["proposed"],
        "uniqueness": stats["unique"] / stats["proposed"],
        "kept_by_density_filter": len(kept) / max(len(unique), 1),
        "kept": len(kept),
        "rejected": len(rejected),
        "fcd_vs_test": fcd,
    }
    rows = [
        ("pipeline speed (mol/s, median)", f"{pipeline_rate:.1f}"),
        ("sampling speed (mol/s, median)", f"{sampling_rate:.1f}"),
        ("validity without correction", f"{100 * payload['validity_without_correction']:.1f}%"),
        ("uniqueness", f"{100 * payload['uniqueness']:.1f}%"),
        ("kept by density filter", f"{100 * payload['kept_by_density_filter']:.1f}% ({len(kept)} of {len(unique)})"),
    ] + [(f"FCD vs test: {name}", "n/a" if value is None else f"{value:.3f}") for name, value in fcd.items()]
    write_results(f"generate_{args.tag}", payload, rows, ("generate", "value"))


if __name__ == "__main__":
    main()

"""What the sampler's settings do to raw validity, its failure classes and FCD, beside the default.

    python benchmarks/sampler_sweep.py [--checkpoint PATH] [-n 2000] [--seeds 0 1] [--settings NAME ...]
        [--tag TAG]

Each setting samples ``-n`` molecules per seed (same seeds, so the same sizes and starting noise
for every setting) and reports the share of raw graphs RDKit accepts, why the others fail (per
1,000 samples: aromatic bonds without a Kekulé structure, an atom over its valence, more than one
fragment), uniqueness, FCD of the unique molecules users get against the QM9 test split, and the
sampling rate. The reference is the FCD floor: as many random training molecules, same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import fcd_score, qm9_split, write_results

from molgen.checkpoint import load_model
from molgen.pipeline import GenerateOptions, sample_molecules
from molgen.sampler import SamplerSettings

SETTINGS = {  # name on the command line: (label in the table, settings)
    "default": ("default (100 steps)", SamplerSettings()),
    "steps200": ("200 steps", SamplerSettings(steps=200)),
    "corrector-snr0.1": ("1 corrector step, snr 0.1", SamplerSettings(corrector_steps=1, snr=0.1)),
    "corrector-snr0.3": ("1 corrector step, snr 0.3", SamplerSettings(corrector_steps=1, snr=0.3)),
    "temperature0.95": ("temperature 0.95", SamplerSettings(temperature=0.95)),
}
FAILURES = ("kekulize", "valence", "disconnected")


def run_setting(loaded, settings: SamplerSettings, n: int, seed: int, test: list[str]) -> dict:
    started = time.perf_counter()
    frame, _ = sample_molecules(loaded, GenerateOptions(n=n, seed=seed, sampler=settings))
    seconds = time.perf_counter() - started
    failures = frame.loc[~frame["raw_valid"], "raw_failure"].value_counts().to_dict()
    unique = frame.loc[~frame["smiles"].duplicated(), "smiles"].tolist()
    return {
        "seed": seed,
        "validity_without_correction": float(frame["raw_valid"].mean()),
        "failures": {name: int(count) for name, count in failures.items()},
        "uniqueness": len(unique) / len(frame),
        "fcd_vs_test": fcd_score(unique, test),
        "molecules_per_second": n / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), metavar="NAME",
                        help=f"Which settings to run, of: {', '.join(SETTINGS)}.")
    parser.add_argument("--tag", default="", help="Results go to sampler_sweep[_TAG].{json,md}.")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    train, test = qm9_split()
    rng = np.random.default_rng(args.seeds[0])
    floor = fcd_score([train[i] for i in rng.choice(len(train), args.n, replace=False)], test)
    results = {}
    for key in args.settings:
        name, settings = SETTINGS[key]
        runs = [run_setting(loaded, settings, args.n, seed, test) for seed in args.seeds]
        results[name] = {"settings": settings.to_dict(), "runs": runs}
        print(name, runs, flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name]["runs"])

    def failures_per_1000(name: str, kind: str) -> float:
        runs = results[name]["runs"]
        if kind == "other":
            return statistics.median(1000 * sum(c for k, c in r["failures"].items() if k not in FAILURES) / args.n for r in runs)
        return statistics.median(1000 * r["failures"].get(kind, 0) / args.n for r in runs)

    rows = [
        (name, f"{100 * median(name, 'validity_without_correction'):.1f}%",
         *(f"{failures_per_1000(name, kind):.1f}" for kind in FAILURES + ("other",)),
         f"{100 * median(name, 'uniqueness'):.1f}%", f"{median(name, 'fcd_vs_test'):.3f}",
         f"{median(name, 'molecules_per_second'):.1f}")
        for name in results
    ]
    rows.append((f"reference: {args.n} random training molecules", "100.0%", "0", "0", "0", "0", "–", f"{floor:.3f}", "–"))
    payload = {"checkpoint": args.checkpoint or "bundled", "samples_per_seed": args.n, "seeds": args.seeds,
               "fcd_floor_random_train": floor, "settings": results}
    header = ("sampler setting (median over seeds)", "raw validity", "kekulize /1k", "valence /1k",
              "disconnected /1k", "other /1k", "uniqueness", "FCD vs test", "mol/s")
    write_results("sampler_sweep" + (f"_{args.tag}" if args.tag else ""), payload, rows, header)


if __name__ == "__main__":
    main()

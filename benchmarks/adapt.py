"""`molgen adapt` on sets the base model never saw, against zero-shot rows and training from scratch.

    python benchmarks/adapt.py --base MODEL [--sets lipo,bbbp] [--minutes 10] [-n 1000] [--seed 0]

For each MoleculeNet set of ../shared/data/molnet (split 80/20 by `molgen adapt` itself):
  * adapt: `molgen adapt SET --base MODEL --minutes M` (wall time, file size, rows per status);
  * held-out NLL bound (nats/molecule) under the new distribution beside the zero-shot rows (the
    base's null id and each of its distributions, before any training: `molgen adapt` measures them
    on the same molecules and noise) and beside a DiScoFormer of the base's size trained from scratch
    on the set's training part for the same minutes (`molgen train --max-minutes M
    --schedule-minutes M`), its ELBO of the same held-out molecules (`molgen score --exact`);
  * AUROC of log_density under the new distribution, and of its log_ratio to the null id (`molgen score
    --versus null`): the set's held-out molecules against held-out molecules of the base's distributions
    (1,000 of each test split the base has data for);
  * ``-n`` samples from the new distribution and from the base's nearest distribution: FCD to the
    set's held-out part, validity without correction, uniqueness;
  * the base's own figures after loading the adapter: generate and score under the base's
    distributions, compared bit for bit with the base alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import REPO, SHARED_DATA, fcd_score, write_results

from molgen.checkpoint import load_model, read_checkpoint
from molgen.pipeline import GenerateOptions, generate
from molgen.scoring import Scorer
from molgen.stats import auroc
from molgen.training.adapt import read_set, split_rows

WORK = REPO / "runs" / "adapt_benchmark"


def molgen(*args: str) -> float:
    """Run the CLI; its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "molgen", *args], check=True, cwd=REPO)
    return time.perf_counter() - started


def base_test_molecules(loaded, count: int, seed: int) -> dict[str, list[str]]:
    """Up to ``count`` held-out molecules of each base distribution whose test split is in the shared data."""
    rng = np.random.default_rng(seed)
    found = {}
    if "qm9" in loaded.distributions:
        from _common import qm9_split

        test = qm9_split()[1]
        found["qm9"] = [test[i] for i in rng.permutation(len(test))[:count]]
    if "moses" in loaded.distributions:
        test = pd.read_csv(SHARED_DATA / "moses" / "test.csv.gz", nrows=50_000)["SMILES"].tolist()
        found["moses"] = [test[i] for i in rng.permutation(len(test))[:count]]
    return found


def samples_figures(loaded, distribution: str, n: int, seed: int, reference: list[str]) -> dict:
    frame, stats = generate(loaded, GenerateOptions(n=n, seed=seed, distribution=distribution, apply_filters=False))
    unique = frame.loc[frame["unique"], "smiles"].tolist()
    return {"validity_without_correction": stats["raw_valid"] / stats["proposed"],
            "uniqueness": stats["unique"] / stats["proposed"], "fcd_to_held_out": fcd_score(unique, reference)}


def one_set(name: str, base: Path, minutes: float, n: int, seed: int) -> dict:
    source = SHARED_DATA / "molnet" / f"{name}.csv"
    out = WORK / f"{name}.pt"
    WORK.mkdir(parents=True, exist_ok=True)
    seconds = molgen("adapt", str(source), "-o", str(out), "--base", str(base), "--minutes", str(minutes),
                     "--seed", str(seed))
    payload = read_checkpoint(out, "molgen-adapter-1")
    card = payload["card"]
    loaded_base = load_model(base)
    adapted = load_model(out)
    encoded, smiles = read_set(source, None, loaded_base.vocab)
    train, held = split_rows(len(encoded.positions), card["config"]["val_fraction"], card["config"]["seed"])
    held_smiles = [smiles[i] for i in held]

    # From scratch on the same training part, for the same minutes.
    train_file = WORK / f"{name}_train.csv"
    pd.DataFrame({"smiles": [smiles[i] for i in train]}).to_csv(train_file, index=False)
    scratch = WORK / f"scratch_{name}"
    config = loaded_base.meta.get("train_config", {}).get("model", {})
    sizes = [f"--d-model={config.get('d_model', 128)}", f"--n-layers={config.get('n_layers', 4)}",
             f"--n-heads={config.get('n_heads', 8)}", f"--d-pair={config.get('d_pair', 32)}"]
    molgen("train", f"{name}={train_file}", "-o", str(scratch), "--max-minutes", str(minutes), "--schedule-minutes",
           str(minutes), "--epochs", "1000", "--aromatic-bonds", "--kekule-features",
           f"--max-atoms={loaded_base.vocab.max_atoms}", *sizes)
    scratch_scores = Scorer(load_model(scratch / "checkpoint.pt"), exact=True).score_smiles(held_smiles)

    # AUROC under the new distribution, the set's held-out molecules against the base's: of log_density,
    # and of log_ratio against the null id (the in-series score, `molgen score --versus null`).
    scorer = Scorer(adapted, payload["name"], versus="null")
    own = scorer.score_smiles(held_smiles)
    aurocs = {"log_density": {}, "log_ratio_vs_null": {}}
    base_held_out = base_test_molecules(loaded_base, 1000, seed)
    for distribution, molecules in base_held_out.items():
        other = scorer.score_smiles(molecules)
        for score, column in (("log_density", "log_density"), ("log_ratio_vs_null", "log_ratio")):
            aurocs[score][distribution] = auroc(own[column].dropna().to_numpy(), other[column].dropna().to_numpy())

    # Samples: the new distribution against the base's nearest one (lowest zero-shot held-out NLL).
    zero_shot = {label: figures["nll_nats"] for label, figures in card["held_out"].items() if label != "adapted"}
    nearest = min((label for label in zero_shot if not label.startswith("null")), key=zero_shot.get).split(" (")[0]
    samples = {"adapted": samples_figures(adapted, payload["name"], n, seed, held_smiles),
               f"base, {nearest}": samples_figures(loaded_base, nearest, n, seed, held_smiles)}

    # The base's own figures with the adapter loaded.
    identical = True
    for distribution in loaded_base.distributions:
        options = GenerateOptions(n=50, seed=seed, distribution=distribution, apply_filters=False)
        identical &= generate(loaded_base, options)[0].equals(generate(adapted, options)[0])
        molecules = base_held_out.get(distribution, [])[:200]
        identical &= Scorer(loaded_base, distribution).score_smiles(molecules).equals(
            Scorer(adapted, distribution).score_smiles(molecules))
    return {
        "adapt_seconds": seconds,
        "file_bytes": out.stat().st_size,
        "card": card,
        # elbo_nats is the bound on log P: the NLL bound is its negative.
        "scratch": {"minutes": minutes, "held_out_nll_nats": -float(np.nanmean(scratch_scores["elbo_nats"])),
                    "held_out_scored": int(scratch_scores["elbo_nats"].notna().sum())},
        "auroc_vs_base_held_out": aurocs,
        "samples": samples,
        "base_bit_identical": bool(identical),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--sets", default="lipo,bbbp")
    parser.add_argument("--minutes", type=float, default=10.0, help="adapt's budget (the whole run) and scratch training's")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    results, rows = {}, []
    for name in args.sets.split(","):
        result = results[name] = one_set(name, args.base.resolve(), args.minutes, args.n, args.seed)
        card = result["card"]
        for label, figures in card["held_out"].items():
            rows.append((name, f"held-out NLL, {label}", f"{figures['nll_nats']:.2f} ± {figures['nll_stderr']:.2f}"))
        rows.append((name, f"held-out NLL, from scratch ({args.minutes:g} min)",
                     f"{result['scratch']['held_out_nll_nats']:.2f}"))
        rows.append((name, "adapt wall time / file size", f"{result['adapt_seconds'] / 60:.1f} min / "
                     f"{result['file_bytes'] / 1e6:.2f} MB"))
        rows.append((name, "of which training / figures after it (estimated before training)",
                     f"{card['training_seconds'] / 60:.1f} min / {card['figures_seconds']['taken'] / 60:.1f} min "
                     f"({card['figures_seconds']['estimated'] / 60:.1f})"))
        rows.append((name, "rows per status", ", ".join(f"{count} {status}" for status, count in
                                                           card["molecules"]["statuses"].items())))
        for score, values in result["auroc_vs_base_held_out"].items():
            for distribution, value in values.items():
                rows.append((name, f"AUROC of {score.replace('_vs_', ' vs ')}, held-out set vs {distribution} test",
                             f"{value:.3f}"))
        for arm, figures in result["samples"].items():
            rows.append((name, f"{args.n} samples, {arm}: FCD to held-out / valid w/o correction / unique",
                         f"{figures['fcd_to_held_out']:.2f} / {100 * figures['validity_without_correction']:.1f}% / "
                         f"{100 * figures['uniqueness']:.1f}%"))
        rows.append((name, "base figures bit-identical with the adapter loaded", str(result["base_bit_identical"])))
    write_results(f"adapt_{args.tag}", {"base": str(args.base), "minutes": args.minutes, "sets": results}, rows,
                  ("set", "figure", "value"))


if __name__ == "__main__":
    main()

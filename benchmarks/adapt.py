"""`molgen adapt` on sets the base model never saw, against zero-shot rows and training from scratch.

    python benchmarks/adapt.py --base MODEL [--sets lipo,bbbp] [--minutes 10] [-n 1000] [--seeds 0,1,2]
        [--skip scratch,samples]

Each figure is given for every seed (`molgen adapt --seed`: the split, the adapters' initial draw, the
batches) and as their median.

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
import shutil
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


def one_set(name: str, base: Path, minutes: float, n: int, seed: int, skip: set[str]) -> dict:
    source = SHARED_DATA / "molnet" / f"{name}.csv"
    out = WORK / f"{name}_seed{seed}.pt"
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

    result = {"adapt_seconds": seconds, "file_bytes": out.stat().st_size, "card": card}

    # From scratch on the same training part, for the same minutes.
    if "scratch" not in skip:
        result["scratch"] = scratch_figures(name, smiles, train, held_smiles, loaded_base, minutes, seed)

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

    result["auroc_vs_base_held_out"] = aurocs

    # Samples: the new distribution against the base's nearest one (lowest zero-shot held-out NLL).
    if "samples" not in skip:
        zero_shot = {label: figures["nll_nats"] for label, figures in card["held_out"].items() if label != "adapted"}
        nearest = min((label for label in zero_shot if not label.startswith("null")), key=zero_shot.get).split(" (")[0]
        result["samples"] = {"adapted": samples_figures(adapted, payload["name"], n, seed, held_smiles),
                             f"base, {nearest}": samples_figures(loaded_base, nearest, n, seed, held_smiles)}

    # The base's own figures with the adapter loaded.
    identical = True
    for distribution in loaded_base.distributions:
        options = GenerateOptions(n=50, seed=seed, distribution=distribution, apply_filters=False)
        identical &= generate(loaded_base, options)[0].equals(generate(adapted, options)[0])
        molecules = base_held_out.get(distribution, [])[:200]
        identical &= Scorer(loaded_base, distribution).score_smiles(molecules).equals(
            Scorer(adapted, distribution).score_smiles(molecules))
    result["base_bit_identical"] = bool(identical)
    return result


def scratch_figures(name: str, smiles: list[str], train, held_smiles: list[str], loaded_base, minutes: float,
                    seed: int) -> dict:
    """A DiScoFormer of the base's size trained from scratch on the set's training part for ``minutes``: its
    NLL bound of the held-out molecules."""
    train_file = WORK / f"{name}_seed{seed}_train.csv"
    pd.DataFrame({"smiles": [smiles[i] for i in train]}).to_csv(train_file, index=False)
    scratch = WORK / f"scratch_{name}_seed{seed}"
    shutil.rmtree(scratch, ignore_errors=True)  # `molgen train` would resume an earlier run found there
    config = loaded_base.meta.get("train_config", {}).get("model", {})
    sizes = [f"--d-model={config.get('d_model', 128)}", f"--n-layers={config.get('n_layers', 4)}",
             f"--n-heads={config.get('n_heads', 8)}", f"--d-pair={config.get('d_pair', 32)}"]
    molgen("train", f"{name}={train_file}", "-o", str(scratch), "--max-minutes", str(minutes), "--schedule-minutes",
           str(minutes), "--epochs", "1000", "--aromatic-bonds", "--kekule-features",
           f"--max-atoms={loaded_base.vocab.max_atoms}", f"--seed={seed}", *sizes)
    scratch_scores = Scorer(load_model(scratch / "checkpoint.pt"), exact=True).score_smiles(held_smiles)

    # elbo_nats is the bound on log P: the NLL bound is its negative.
    return {"minutes": minutes, "held_out_nll_nats": -float(np.nanmean(scratch_scores["elbo_nats"])),
            "held_out_scored": int(scratch_scores["elbo_nats"].notna().sum())}


def figure_rows(name: str, results: list[dict], minutes: float, n: int) -> list[tuple]:
    """The set's table rows: each figure as the median over seeds, then every seed's value."""

    def row(label: str, values: list[float], form: str) -> tuple:
        cells = " / ".join(format(value, form) for value in values)
        return (name, label, format(float(np.median(values)), form), cells)

    rows = []
    cards = [result["card"] for result in results]
    for label in cards[0]["held_out"]:
        rows.append(row(f"held-out NLL, {label}", [card["held_out"][label]["nll_nats"] for card in cards], ".2f"))
    if "scratch" in results[0]:
        rows.append(row(f"held-out NLL, from scratch ({minutes:g} min)",
                        [result["scratch"]["held_out_nll_nats"] for result in results], ".2f"))
    rows.append(row("adapt wall time (min)", [result["adapt_seconds"] / 60 for result in results], ".1f"))
    rows.append(row("of which training (min)", [card["training_seconds"] / 60 for card in cards], ".1f"))
    rows.append(row("of which the figures after it (min)", [card["figures_seconds"]["taken"] / 60 for card in cards], ".1f"))
    rows.append(row("training steps", [card["steps"] for card in cards], ".0f"))
    rows.append(row("adapter file (MB)", [result["file_bytes"] / 1e6 for result in results], ".2f"))
    for score, values in results[0]["auroc_vs_base_held_out"].items():
        for distribution in values:
            rows.append(row(f"AUROC of {score.replace('_vs_', ' vs ')}, held-out set vs {distribution} test",
                            [result["auroc_vs_base_held_out"][score][distribution] for result in results], ".3f"))
    for arm in results[0].get("samples", {}):
        for key, label, scale in (("fcd_to_held_out", "FCD to held-out", 1), ("validity_without_correction",
                                  "valid w/o correction (%)", 100), ("uniqueness", "unique (%)", 100)):
            rows.append(row(f"{n} samples, {arm}: {label}", [scale * result["samples"][arm][key] for result in results],
                            ".2f" if scale == 1 else ".1f"))
    statuses = ", ".join(f"{count} {status}" for status, count in cards[0]["molecules"]["statuses"].items())
    rows.append((name, "rows per status", statuses, ""))
    rows.append((name, "base figures bit-identical with the adapter loaded",
                 str(all(result["base_bit_identical"] for result in results)), ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--sets", default="lipo,bbbp")
    parser.add_argument("--minutes", type=float, default=10.0, help="adapt's budget (the whole run) and scratch training's")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--skip", default="", help="Parts to leave out: scratch, samples (comma-separated).")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    skip = {part for part in args.skip.split(",") if part}
    if not skip <= {"scratch", "samples"}:
        parser.error(f"--skip takes scratch and samples, not {', '.join(sorted(skip - {'scratch', 'samples'}))}")
    results, rows = {}, []
    for name in args.sets.split(","):
        results[name] = [one_set(name, args.base.resolve(), args.minutes, args.n, seed, skip) for seed in seeds]
        rows += figure_rows(name, results[name], args.minutes, args.n)
    write_results(f"adapt_{args.tag}", {"base": str(args.base), "minutes": args.minutes, "seeds": seeds,
                                        "skipped": sorted(skip), "sets": results}, rows,
                  ("set", "figure", "median", "per seed (" + ", ".join(map(str, seeds)) + ")"))


if __name__ == "__main__":
    main()

"""The MOSES benchmark: the drug-like DiScoFormer and its references in one harness, then BENCHMARKS.md.

    python benchmarks/run_moses.py --only discoformer --checkpoint MODEL [-n 10000]
    python benchmarks/run_moses.py --only discoformer --report runs/qm9_moses_final/eval_moses.json
    python benchmarks/run_moses.py --only smiles_lm [--lm-epochs 0.5] [--lm-max-minutes 120]

Parts (each writes benchmarks/results/eval_moses_<part>.json; BENCHMARKS.md is rebuilt by
benchmarks/run_all.py's writer from whatever part files exist):
  * discoformer: ``molgen evaluate --dist moses`` of a checkpoint (10,000 samples of its moses
    distribution; density metrics on 1,000 held-out test molecules and their single-edit mutants),
    with the random-train-sample floor and kNN-Tanimoto of the same run; ``--report`` takes the JSON a
    ``molgen evaluate --dist moses`` run already wrote instead of sampling again.
  * smiles_lm: the SMILES Transformer reference (molgen.baselines.smiles_lm, the QM9 one's size)
    trained here on MOSES train (5,000 of its molecules held out for validation) for less than the
    DiScoFormer's budget (half an epoch against its one, 120 minutes at most; runs/smiles_lm_moses.pt,
    checkpointed every 10 minutes and resumed), then sampled (10,000) and scored like the DiScoFormer,
    its exact string NLL on the same held-out molecules and mutants. Its CPU time is measured, so it
    can run beside other work at low priority.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from _common import REPO, RESULTS, SHARED_DATA, machine

from molgen.baselines.smiles_lm import SmilesLMConfig, build_vocabulary, train_smiles_lm, training_record
from molgen.checkpoint import load_model
from molgen.evaluation.moses import moses_metrics
from molgen.evaluation.moses_report import evaluate_moses, load_moses_reference
from molgen.evaluation.report import decoy_aurocs, decoy_sets
from molgen.stats import mean_with_stderr

PARTS = ("discoformer", "smiles_lm")
LM_CHECKPOINT = REPO / "runs" / "smiles_lm_moses.pt"
LM_VALIDATION = 5_000


def cpu_seconds() -> float:
    """User and system CPU time of this process and its finished children: the budget that counts
    when a run shares the machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def smiles_lm_part(folder: Path, args, log) -> dict:
    from molgen.data import prepare_dataset

    log("MOSES train (the prepared set's canonical SMILES)")
    train_set, _ = prepare_dataset(folder / "train.csv.gz", aromatic_bonds=True)
    train = train_set.smiles.astype(str).tolist()
    held = set(np.random.default_rng(args.seed).permutation(len(train))[:LM_VALIDATION].tolist())
    fit = [s for i, s in enumerate(train) if i not in held]
    validation = [train[i] for i in sorted(held)]
    log(f"training on {len(fit):,} molecules, validating on {len(validation):,}")
    cpu_before = cpu_seconds()
    model = train_smiles_lm(fit, validation, LM_CHECKPOINT, epochs=args.lm_epochs, max_minutes=args.lm_max_minutes,
                            seed=args.seed, config=SmilesLMConfig(vocab=build_vocabulary(fit)),
                            checkpoint_minutes=10, log=log)
    record = training_record(LM_CHECKPOINT)
    log("held-out molecules, mutants and test statistics")
    data, statistics = load_moses_reference(folder, args.density_molecules, args.seed, log=log)
    log(f"sampling {args.n:,}")
    started = time.perf_counter()
    samples = model.sample(args.n, seed=args.seed)
    sampling_seconds = time.perf_counter() - started
    generation = moses_metrics(samples, statistics, set(data.train))
    generation["valid_without_correction"] = generation["valid"]  # a SMILES model's samples are never corrected
    generation["sampling_molecules_per_second"] = args.n / sampling_seconds
    nll = model.nll(data.density_test)
    decoys = {name: -model.nll(smiles) for name, smiles in decoy_sets(data).items()}
    log_likelihood = decoy_aurocs(-nll, decoys)
    return {
        "model": {"parameters": model.num_parameters(), "epochs": record["epoch"],
                  "training_seconds": record["elapsed"], "history": record["history"],
                  "cpu_seconds_this_run": cpu_seconds() - cpu_before},
        "generation": generation,
        "density": {"nll_test": mean_with_stderr(nll[~np.isnan(nll)]), "log_likelihood": log_likelihood,
                    "nll_auroc_vs_mutants": log_likelihood["auroc_vs_mutants"]},
        "decoys": {"test_molecules": len(data.density_test), "mutants": len(data.mutants),
                   "mutant_edits": data.mutant_edits},
    }


def discoformer_part(folder: Path, args, log) -> dict:
    if args.report:
        return json.loads(Path(args.report).read_text())
    data, statistics = load_moses_reference(folder, args.density_molecules, args.seed, log=log)
    result = evaluate_moses(load_model(args.checkpoint), data, statistics, args.n, args.seed, args.elbo_samples, log=log)
    result["checkpoint"] = str(args.checkpoint)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help="Comma-separated parts to (re)run.")
    parser.add_argument("--checkpoint", default=None, help="The drug-like model (a checkpoint with a moses distribution).")
    parser.add_argument("--report", default=None, help="A `molgen evaluate --dist moses` JSON to take as the "
                        "discoformer part instead of sampling again.")
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--density-molecules", type=int, default=1000)
    parser.add_argument("--elbo-samples", type=int, default=256)
    parser.add_argument("--lm-epochs", type=float, default=0.5)
    parser.add_argument("--lm-max-minutes", type=float, default=120.0)
    parser.add_argument("--moses-path", type=Path, default=SHARED_DATA / "moses")
    args = parser.parse_args()
    chosen = [part for part in args.only.split(",") if part]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    if "discoformer" in chosen and not (args.checkpoint or args.report):
        parser.error("the discoformer part needs --checkpoint (a drug-like model) or --report")

    def log(message: str) -> None:
        print(f"   {message}", flush=True)

    for part in chosen:
        print(f"== {part}", flush=True)
        started = time.perf_counter()
        result = (discoformer_part if part == "discoformer" else smiles_lm_part)(args.moses_path, args, log)
        # A --report keeps its own run's seconds and settings.
        result.setdefault("seconds", time.perf_counter() - started)
        result.setdefault("settings", {"n": args.n, "seed": args.seed, "density_molecules": args.density_molecules})
        result["machine"] = machine()
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"eval_moses_{part}.json").write_text(json.dumps(result, indent=2) + "\n")

    from run_all import rebuild_benchmarks_md

    rebuild_benchmarks_md()


if __name__ == "__main__":
    main()

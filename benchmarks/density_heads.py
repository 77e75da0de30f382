"""Density heads of one score model side by side, on the evaluation's decoys and ELBO yardstick.

    python benchmarks/density_heads.py HEAD [HEAD ...] [--molecules 1000] [--samples 256] [--cache FILE]

Every HEAD is a checkpoint of the same score model with another density head (e.g. the bundled model,
and `molgen fit-near-miss` outputs of it). The ELBO is the score model's, so the two 256-level estimates
of `molgen evaluate`'s density part (same test molecules, same seeds) are drawn once, with the first
HEAD, and shared: each head's figures are exactly what `molgen evaluate` would report for it (AUROC of
log_density against the single-edit mutants, Spearman(D, ELBO) corrected for the yardstick's noise with
its 95% bootstrap interval, the same within each heavy-atom count with at least 100 of these molecules,
calibration over the whole test split, the highest test log_density), at a fraction of its time.
``--cache`` keeps the estimates in a file for the next run (checked against the settings).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from _common import SHARED_DATA, write_results

from molgen.checkpoint import load_model
from molgen.evaluation.report import heavy_atoms, load_reference_data
from molgen.scoring import Scorer
from molgen.stats import auroc, spearman, spearman_against_exact, spearman_against_exact_interval

MIN_PER_SIZE = 100


def score_model_digest(model) -> str:
    """A digest of every weight outside the density head: what the ELBO depends on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("density."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def elbo_estimates(loaded, score_model: str, smiles: list[str], samples: int,
                   cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Two independent ``samples``-level ELBO estimates (nats) of ``smiles`` under ``loaded``'s score
    model (``score_model``, its digest, keys the cache), seeds 0 and 1 as in
    :func:`molgen.evaluation.report.discoformer_density`."""
    digest = hashlib.sha256("\n".join(smiles).encode()).hexdigest()
    key = np.array([str(samples), digest, score_model])
    if cache is not None and cache.exists():
        stored = np.load(cache)
        if np.array_equal(stored["key"], key):
            return stored["first"], stored["second"]
    first, second = (Scorer(loaded, None, exact=True, exact_samples=samples, seed=seed)
                     .score_smiles(smiles)["elbo_nats"].to_numpy() for seed in (0, 1))
    if cache is not None:
        np.savez(cache, key=key, first=first, second=second)
    return first, second


def corrected(density: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    return spearman_against_exact(spearman(density, (first + second) / 2), spearman(first, second), estimates=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heads", nargs="+", help="Checkpoints of one score model (the first draws the ELBOs).")
    parser.add_argument("--molecules", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=256, help="Noise levels per ELBO estimate.")
    parser.add_argument("--cache", type=Path, default=None, help="npz file keeping the ELBO estimates between runs.")
    parser.add_argument("--tag", default="qm9")
    args = parser.parse_args()

    models = [load_model(checkpoint) for checkpoint in args.heads]
    score_models = {score_model_digest(loaded.model) for loaded in models}
    if len(score_models) > 1:
        parser.error("every HEAD must be the same score model with another density head")
    data = load_reference_data(SHARED_DATA, args.molecules, seed=0)
    first, second = elbo_estimates(models[0], score_models.pop(), data.density_test, args.samples, args.cache)
    sizes = np.array([heavy_atoms(s) for s in data.density_test])
    counted = [int(n) for n in np.unique(sizes) if (sizes == n).sum() >= MIN_PER_SIZE]
    heads = []
    for checkpoint, loaded in zip(args.heads, models):
        scorer = Scorer(loaded)
        density = scorer.score_smiles(data.density_test)["log_density"].to_numpy()
        mutants = scorer.score_smiles(data.mutants)["log_density"].to_numpy()
        whole = scorer.score_smiles(data.test)
        heads.append({
            "checkpoint": checkpoint,
            "auroc_vs_mutants": auroc(density, mutants),
            "spearman_density_elbo_corrected": corrected(density, first, second),
            "spearman_density_elbo_corrected_interval":
                spearman_against_exact_interval(density, first, second, seed=0),
            "by_heavy_atoms": {n: corrected(density[sizes == n], first[sizes == n], second[sizes == n]) for n in counted},
            "share_below_5th_percentile_test": float((whole["density_percentile"].to_numpy() < 5).mean()),
            "highest_test_log_density": float(np.nanmax(whole["log_density"].to_numpy())),
        })
    payload = {"molecules": len(data.density_test), "mutants": len(data.mutants), "elbo_samples": args.samples,
               "elbo_repeatability_spearman": spearman(first, second),
               "molecules_per_size": {n: int((sizes == n).sum()) for n in counted}, "heads": heads}
    sizes_label = " / ".join(str(n) for n in counted)
    rows = [(Path(head["checkpoint"]).name, f"{head['auroc_vs_mutants']:.3f}",
             "{:.3f} [{:.3f}, {:.3f}]".format(head["spearman_density_elbo_corrected"],
                                              *head["spearman_density_elbo_corrected_interval"]),
             " / ".join(f"{head['by_heavy_atoms'][n]:.3f}" for n in counted),
             f"{100 * head['share_below_5th_percentile_test']:.2f}%", f"{head['highest_test_log_density']:.2f}")
            for head in heads]
    write_results(f"density_heads_{args.tag}", payload, rows,
                  ("head", "AUROC of log_density vs mutants", "corrected Spearman(D, ELBO) [95% interval]",
                   f"the same within {sizes_label} heavy atoms", "test below the 5th percentile",
                   "highest test log_density"))


if __name__ == "__main__":
    main()

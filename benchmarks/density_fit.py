"""How well the density head D tracks the ELBO on held-out molecules, against a pooled yardstick.

    python benchmarks/density_fit.py [--checkpoint PATH] [--compare PATH] [--molecules 1000]
                                     [--samples 256] [--rounds 4] [--device cpu]

On ``--molecules`` molecules of the validation split (never trained on): ``--rounds`` independent
ELBO estimates of the bound on -log P (nats, ``--samples`` stratified, importance-sampled noise
levels each), the density head's log P from one forward pass, and Spearman(D, -ELBO) against one
estimate and against the mean of all of them. One estimate is a noisy yardstick: even an exact D
would not reach 1 against it. References measured in the same run:
  * repeatability: Spearman between two single estimates (mean over pairs), and between the means of
    the two halves of the rounds (how exact the pooled yardstick is);
  * against the exact ELBO: both Spearmans corrected for the yardstick's noise
    (:func:`molgen.stats.spearman_against_exact`); the two corrected figures should agree;
  * size only: Spearman(log p(n), -ELBO), what knowing only the heavy-atom count gives;
  * ``--compare``: another density head on the same score model (the ELBO is the score model's,
    so one yardstick serves both), e.g. the previous bundled checkpoint.

``--per-size N``: the same figures within each heavy-atom count that has at least N molecules in the
test split, on N random test molecules of that count (ranking molecules of one size is what is left
once the size term, which the head gets right, is taken out).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import SHARED_DATA, write_results

from molgen.checkpoint import load_model
from molgen.data import locate_qm9, prepare_dataset
from molgen.stats import spearman, spearman_against_exact
from molgen.likelihood import MAX_ELBO_ROWS, elbo, log_density


def same_score_model(first, second) -> bool:
    """Whether two models share every weight outside their density heads."""
    ours, theirs = first.state_dict(), second.state_dict()
    shared = [name for name in ours if not name.startswith("density.")]
    return all(name in theirs and torch.equal(ours[name], theirs[name]) for name in shared)


def agreement(loaded, other, dataset, rows: np.ndarray, size_log_probs: torch.Tensor, args) -> dict:
    """The density head against ``args.rounds`` ELBO estimates on ``rows`` of ``dataset``."""
    estimates, errors, density, compared = [], [], [], []
    for start in range(0, len(rows), args.batch):
        batch = dataset.batch(rows[start : start + args.batch]).to(args.device)
        dist = torch.zeros(batch.mask.shape[0], dtype=torch.long, device=args.device)
        rounds = []
        for index in range(args.rounds):
            generator = torch.Generator(device=args.device).manual_seed(index * 10**6 + start)
            estimate, stderr = elbo(loaded.model, batch, dist, loaded.noise, size_log_probs, args.samples, generator,
                                    proposal=loaded.elbo_proposal, max_rows=args.elbo_rows)
            rounds.append(estimate.cpu().numpy())
            errors.append(stderr.cpu().numpy())
        estimates.append(np.stack(rounds, axis=1))
        density.append(log_density(loaded.model, batch, dist, loaded.noise).cpu().numpy())
        if other is not None:
            compared.append(log_density(other.model, batch, dist, other.noise).cpu().numpy())
    estimates, density = np.concatenate(estimates), np.concatenate(density)  # (M, R), (M,)
    pooled = estimates.mean(axis=1)
    half = args.rounds // 2
    errors = np.concatenate(errors)
    size_prior = size_log_probs.cpu().numpy()[dataset.sizes[rows]]
    repeatability = float(np.mean([spearman(estimates[:, i], estimates[:, j])
                                   for i in range(args.rounds) for j in range(i + 1, args.rounds)]))
    # Against one estimate: the mean over the rounds' single estimates, a steadier figure than the first's.
    single = float(np.mean([spearman(density, -estimates[:, i]) for i in range(args.rounds)]))
    against_pooled = spearman(density, -pooled)
    return {
        "nll_bound_nats_mean": float(pooled.mean()),
        "nll_bound_nats_stderr_of_mean": float(np.sqrt((errors**2).sum()) / len(errors)),  # over all M x R estimates
        "spearman_density_elbo": single,
        "spearman_density_elbo_pooled": against_pooled,
        "spearman_density_exact_elbo_from_single": spearman_against_exact(single, repeatability, 1),
        "spearman_density_exact_elbo_from_pooled": spearman_against_exact(against_pooled, repeatability, args.rounds),
        "reference_repeatability_spearman": repeatability,
        "reference_half_pools_spearman": spearman(estimates[:, :half].mean(1), estimates[:, half:].mean(1)),
        "reference_size_only_spearman": spearman(size_prior, -pooled),
        "compare_spearman_density_elbo_pooled": spearman(np.concatenate(compared), -pooled) if compared else None,
        "density_minus_elbo_mean": float((density + pooled).mean()),
        "density_elbo_mean_absolute_difference": float(np.abs(density + pooled).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--compare", default=None, help="Another density head on the same score model.")
    parser.add_argument("--molecules", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--elbo-rows", type=int, default=MAX_ELBO_ROWS, help="Molecules x levels per forward call.")
    parser.add_argument("--per-size", type=int, default=0, help="Test molecules per heavy-atom count (0: none).")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (repeatability needs two estimates)")

    try:
        loaded = load_model(args.checkpoint, device=args.device)
        other = load_model(args.compare, device=args.device) if args.compare else None
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if other is not None and not same_score_model(loaded.model, other.model):
        parser.error("--compare must be the same score model with another density head")
    files = locate_qm9(SHARED_DATA)
    dataset, _ = prepare_dataset(files.csv, files.test_idx, vocab=loaded.vocab)  # the model's atoms and bonds
    rows = np.random.default_rng(0).permutation(dataset.indices("val"))[: args.molecules]
    size_log_probs = torch.log(torch.tensor(loaded.size_distributions[0]) + 1e-12).float().to(args.device)
    started = time.perf_counter()
    payload = {
        "checkpoint": args.checkpoint or "bundled",
        "compare": args.compare,
        "device": args.device,
        "molecules": len(rows),
        "elbo_samples": args.samples,
        "rounds": args.rounds,
        **agreement(loaded, other, dataset, rows, size_log_probs, args),
    }
    per_size = []
    if args.per_size:
        test = dataset.indices("test")
        sizes, counts = np.unique(dataset.sizes[test], return_counts=True)
        for size in sizes[counts >= args.per_size]:
            chosen = np.random.default_rng(int(size)).permutation(test[dataset.sizes[test] == size])[: args.per_size]
            per_size.append({"heavy_atoms": int(size), **agreement(loaded, other, dataset, chosen, size_log_probs, args)})
    payload["per_size"] = per_size
    payload["seconds"] = time.perf_counter() - started
    levels = args.samples * args.rounds
    half = args.rounds // 2
    table = [
        ("NLL bound, held-out (nats/molecule)",
         f"{payload['nll_bound_nats_mean']:.2f} ± {payload['nll_bound_nats_stderr_of_mean']:.2f}"),
        (f"Spearman(D, ELBO): one {args.samples}-level estimate (mean over rounds)", f"{payload['spearman_density_elbo']:.3f}"),
        (f"Spearman(D, ELBO): mean of {args.rounds} ({levels} levels)", f"{payload['spearman_density_elbo_pooled']:.3f}"),
        ("Spearman(D, exact ELBO), corrected from one / from the mean",
         f"{payload['spearman_density_exact_elbo_from_single']:.3f} / "
         f"{payload['spearman_density_exact_elbo_from_pooled']:.3f}"),
        ("reference: two single estimates agree to (mean over pairs)", f"{payload['reference_repeatability_spearman']:.3f}"),
        (f"reference: the means of {half} and {args.rounds - half} estimates agree to",
         f"{payload['reference_half_pools_spearman']:.3f}"),
        ("reference: size only, Spearman(log p(n), ELBO)", f"{payload['reference_size_only_spearman']:.3f}"),
    ]
    if other is not None:
        table.append(("reference: the --compare head against the same mean",
                      f"{payload['compare_spearman_density_elbo_pooled']:.3f}"))
    table.append(("mean D - (-ELBO) (nats)", f"{payload['density_minus_elbo_mean']:.2f}"))
    for part in per_size:
        table.append((f"{part['heavy_atoms']} heavy atoms, {args.per_size} test molecules: Spearman(D, exact ELBO) "
                      "corrected from the mean; mean absolute D - (-ELBO) (nats)",
                      f"{part['spearman_density_exact_elbo_from_pooled']:.3f}; "
                      f"{part['density_elbo_mean_absolute_difference']:.2f}"))
    write_results("density_fit", payload, table, (f"density head, {len(rows)} held-out QM9 molecules", "value"))


if __name__ == "__main__":
    main()

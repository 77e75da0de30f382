"""How well the density head D tracks the ELBO on held-out molecules, beside two references.

    python benchmarks/density_fit.py --checkpoint RUN/checkpoint.pt [--molecules 1000] [--samples 64]

On ``--molecules`` molecules of the validation split (never trained on): the ELBO bound on -log P
(nats, ``--samples`` stratified, importance-sampled noise levels each) with its standard error, the density head's
log P from one forward pass, and Spearman(D, -ELBO). References measured in the same run:
  * repeatability: Spearman between two independent ELBO estimates of the same molecules; a D
    equal to the exact ELBO would reach about its square root against one estimate;
  * size only: Spearman(log p(n), -ELBO), what knowing only the heavy-atom count gives.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import SHARED_DATA, write_results

from molgen.checkpoint import load_model
from molgen.data import locate_qm9, prepare_dataset
from molgen.evaluation.density import spearman
from molgen.likelihood import elbo, log_density


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--molecules", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    files = locate_qm9(SHARED_DATA)
    dataset, _ = prepare_dataset(files.csv, files.test_idx, vocab=loaded.vocab)  # the model's atoms and bonds
    rows = np.random.default_rng(0).permutation(dataset.indices("val"))[: args.molecules]
    size_log_probs = torch.log(torch.tensor(loaded.size_distributions[0]) + 1e-12).float()
    started = time.perf_counter()
    first, second, errors, density = [], [], [], []
    for start in range(0, len(rows), args.batch):
        batch = dataset.batch(rows[start : start + args.batch])
        dist = torch.zeros(batch.mask.shape[0], dtype=torch.long)
        for seed, store in ((start, first), (10**6 + start, second)):
            estimate, stderr = elbo(loaded.model, batch, dist, loaded.noise, size_log_probs, args.samples,
                                    torch.Generator().manual_seed(seed), proposal=loaded.elbo_proposal)
            store.append(estimate.numpy())
            if store is first:
                errors.append(stderr.numpy())
        density.append(log_density(loaded.model, batch, dist, loaded.noise).numpy())
    first, second = np.concatenate(first), np.concatenate(second)
    errors, density = np.concatenate(errors), np.concatenate(density)
    size_prior = size_log_probs.numpy()[dataset.sizes[rows]]
    payload = {
        "checkpoint": args.checkpoint or "bundled",
        "molecules": int(len(rows)),
        "elbo_samples": args.samples,
        "nll_bound_nats_mean": float(first.mean()),
        "nll_bound_nats_stderr_of_mean": float(np.sqrt((errors**2).sum()) / len(errors)),
        "per_molecule_stderr_median": float(np.median(errors)),
        "spearman_density_elbo": spearman(density, -first),
        "reference_repeatability_spearman": spearman(-first, -second),
        "reference_size_only_spearman": spearman(size_prior, -first),
        "density_minus_elbo_mean": float((density + first).mean()),
        "seconds": time.perf_counter() - started,
    }
    rows_table = [
        ("NLL bound, held-out (nats/molecule)", f"{payload['nll_bound_nats_mean']:.2f} ± {payload['nll_bound_nats_stderr_of_mean']:.2f}"),
        ("Spearman(D, ELBO)", f"{payload['spearman_density_elbo']:.3f}"),
        ("reference: ELBO repeatability (an exact D reaches about its square root)", f"{payload['reference_repeatability_spearman']:.3f}"),
        ("reference: size only, Spearman(log p(n), ELBO)", f"{payload['reference_size_only_spearman']:.3f}"),
        ("mean D - (-ELBO) (nats)", f"{payload['density_minus_elbo_mean']:.2f}"),
    ]
    write_results("density_fit", payload, rows_table, (f"density head, {len(rows)} held-out QM9 molecules", "value"))


if __name__ == "__main__":
    main()

"""`molgen adapt`: a user's molecule set as a new distribution of a trained DiScoFormer.

The base model gains one [DIST] embedding (started from the null one: the generic model is the best
guess before any training) and low-rank adapters that act only on molecules of that id
(:mod:`molgen.model.adapters`). Only those are trained, on the score loss the base was trained with;
the backbone, both heads and every other embedding stay frozen, so the base's own distributions are
computed bit for bit as before. Then the held-out part of the set calibrates the density percentiles
of the new distribution.

What is written is small: the new embedding and the adapters, the base's content digest (loading
with another base is refused), the set's size histogram, calibration, training-set hashes (novelty)
and a card. :func:`adapted_model` rebuilds the extended model from a base and such a file.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from molgen.checkpoint import ADAPTER_FORMAT, CheckpointError, LoadedModel, read_checkpoint, save_checkpoint
from molgen.likelihood import clean_states, elbo, log_density
from molgen.model import DiScoFormer
from molgen.model.config import AdapterConfig
from molgen.model.density import DENSITY_SCALE, member_output
from molgen.novelty import smiles_hash
from molgen.scoring import CALIBRATION_QUANTILES, EncodedChunk
from molgen.stats import spearman
from molgen.training.losses import LossWeights, training_losses

if TYPE_CHECKING:  # torch-geometric loads when adapt runs, not when the CLI starts
    from molgen.pyg import MoleculeGraphs


# The figures' estimate times this: the density term pads its ELBO batches to the largest molecule of the
# set, and its fit adds epochs over the states (measured on lipo and bbbp: docs/notes/adapt-drug-like.md).
FIGURES_MARGIN = 1.5


@dataclass
class AdaptConfig:
    name: str = "adapted"
    rank: int = 8
    minutes: float = 10.0  # time budget of the whole run: training stops in time for the figures after it
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 3e-3
    val_fraction: float = 0.2
    # What follows training costs ELBO passes (two forward calls a noise level): on drug-like molecules
    # about 100 molecule-levels/s on 2 cores, so these keep it to a few minutes. Every row of the
    # held-out table is measured on the same molecules with the same noise: their differences are
    # paired, far tighter than each row's standard error over molecules.
    elbo_samples: int = 8  # noise levels per held-out ELBO
    check_molecules: int = 256  # held-out molecules of the NLL table (calibration uses all of them)
    density_molecules: int = 1_000  # training molecules whose ELBO the distribution's density term is fit on
    density_samples: int = 8  # noise levels per such ELBO (the fit averages their noise over the molecules)
    density_epochs: int = 300
    checkpoint_minutes: float = 2.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def extended(base: DiScoFormer, rank: int, seed: int = 0) -> DiScoFormer:
    """``base`` with one more [DIST] id (index = the base's null index; the null id moves one up) and
    low-rank adapters on it. The new embedding starts as the base's null one and the adapters at zero,
    so before training the new distribution is the base's generic model. The adapters' random parts
    (each LoRA's ``down``, the density member's hidden layers) are drawn from ``seed``, not from torch's
    global generator: the same seed gives the same adapter file."""
    k = base.config.num_distributions
    config = replace(base.config, num_distributions=k + 1, adapter=AdapterConfig(rank=rank, distribution=k))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiScoFormer(config)
    state = base.state_dict()
    table = state["dist.weight"]
    state["dist.weight"] = torch.cat([table[:k], table[k:k + 1], table[k:k + 1]])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(key.startswith("adapters.") for key in missing), (missing, unexpected)
    return model


def adapter_weights(model: DiScoFormer) -> dict[str, torch.Tensor]:
    """What the adapter file stores: the new [DIST] row and the adapters."""
    index = model.config.adapter.distribution
    return {"dist_row": model.dist.weight[index].detach().clone(),
            **{f"adapters.{key}": value.detach().clone() for key, value in model.adapters.state_dict().items()}}


def load_adapter_weights(model: DiScoFormer, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        model.dist.weight[model.config.adapter.distribution] = weights["dist_row"]
    state = {key[len("adapters."):]: value for key, value in weights.items() if key.startswith("adapters.")}
    # Files written before the adapters carried the set's size term: their member was fit with it inside.
    state.setdefault("size_shift", torch.zeros_like(model.adapters.size_shift))
    model.adapters.load_state_dict(state)


def trainable(model: DiScoFormer) -> list[torch.nn.Parameter]:
    """Freeze everything but the adapters and the [DIST] table (whose other rows get no gradient:
    :func:`_only_new_row`)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parameters = list(model.adapters.parameters()) + [model.dist.weight]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def _only_new_row(model: DiScoFormer) -> None:
    index = model.config.adapter.distribution
    keep = torch.zeros_like(model.dist.weight)
    keep[index] = 1.0
    model.dist.weight.grad.mul_(keep)


def read_set(path, smiles_column: str | None, vocab, workers: int = 1) -> tuple[EncodedChunk, list[str]]:
    """Every row of a molecule file encoded for ``vocab`` with a status (as ``molgen score`` reads it),
    and the canonical SMILES of the rows that are ok."""
    from molgen.chemistry import canonical_smiles, parse_smiles
    from molgen.io import read_molecules
    from molgen.scoring import encode_smiles

    status, reason, atoms, bonds, sizes, positions, smiles = [], [], [], [], [], [], []
    offset = 0
    for chunk in read_molecules(path, smiles_column):
        encoded = encode_smiles(chunk.smiles, chunk.read_error, vocab.to_dict())
        status += encoded.status
        reason += encoded.reason
        atoms.append(encoded.atoms)
        bonds.append(encoded.bonds)
        sizes.append(encoded.sizes)
        positions.append(encoded.positions + offset)
        smiles += [canonical_smiles(parse_smiles(chunk.smiles[i])) for i in encoded.positions]
        offset += len(chunk)
    n = vocab.max_atoms
    return EncodedChunk(status, reason, np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64),
                        np.concatenate(atoms) if atoms else np.zeros((0, n), dtype=np.int8),
                        np.concatenate(bonds) if bonds else np.zeros((0, n, n), dtype=np.int8),
                        np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int8)), smiles


def split_rows(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, int(round(val_fraction * count))) if count > 1 else 0
    return np.sort(order[held:]), np.sort(order[:held])


def size_distribution(sizes: np.ndarray, max_atoms: int) -> list[float]:
    counts = np.bincount(sizes, minlength=max_atoms + 1).astype(np.float64)
    return (counts / max(counts.sum(), 1.0)).tolist()


@torch.no_grad()
def padded_states(model: DiScoFormer, loaded: LoadedModel, graphs: MoleculeGraphs, rows: np.ndarray,
                  dist_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean-end token states, masks and the shared head's D of ``rows`` under ``dist_index``, padded to
    the largest molecule of all ``rows``."""
    n = int(graphs.sizes[rows].max()) if len(rows) else 1
    states, masks, shared = [], [], []
    for start in range(0, len(rows), 256):
        batch = graphs.dense(rows[start : start + 256], max_atoms=n)
        dist = torch.full((batch.mask.shape[0],), dist_index, dtype=torch.long)
        state = clean_states(model, batch, dist, loaded.noise)
        states.append(state)
        masks.append(batch.mask)
        shared.append(model.density(state, batch.mask, bound=False))  # the term is added before the bound
    return torch.cat(states), torch.cat(masks), torch.cat(shared)


def fit_density_term(model: DiScoFormer, loaded: LoadedModel, graphs: MoleculeGraphs, train: np.ndarray,
                     checked: np.ndarray, checked_elbo: np.ndarray, size_log_probs: torch.Tensor,
                     config: AdaptConfig) -> dict:
    """Fit the adapted distribution's own density term so that D follows its ELBO: on the ELBOs of up
    to ``density_molecules`` training molecules, the residual of the shared head regressed by the
    term's member (Huber, 2 nats). A fifth of those molecules decides when to stop (the term as it was
    at its best there, zero included: a small set's noisy targets are easy to overfit). Returns
    Spearman(D, -ELBO) on the held-out molecules ``checked`` (their ELBO estimates ``checked_elbo``,
    which the term does not change) before and after."""
    index = model.config.adapter.distribution
    rows = np.random.default_rng(config.seed).permutation(train)[: config.density_molecules]
    states, masks, shared = padded_states(model, loaded, graphs, rows, index)
    bounds = torch.from_numpy(held_out_bounds(model, loaded, graphs, rows, index, size_log_probs,
                                              config.density_samples, config.seed)).float()
    check_states, check_masks, check_shared = padded_states(model, loaded, graphs, checked, index)
    member = model.adapters.density
    # The member fits what the size term leaves.
    residual = (-bounds - shared - model.adapters.size_term(masks)) / DENSITY_SCALE
    stop = max(1, len(rows) // 5)
    fit, watch = torch.arange(stop, len(rows)), torch.arange(stop)

    def loss_on(part: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(member_output(member, states[part], masks[part]), residual[part], delta=2.0 / DENSITY_SCALE)

    before = spearman(check_shared.numpy(), -checked_elbo)
    for parameter in member.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(member.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        best, best_state, best_epoch = float(loss_on(watch)), {k: v.clone() for k, v in member.state_dict().items()}, 0
    for epoch in range(1, config.density_epochs + 1):
        for batch in fit[torch.randperm(len(fit), generator=generator)].split(256):
            loss = loss_on(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            watched = float(loss_on(watch))
        if watched < best:
            best, best_state, best_epoch = watched, {k: v.clone() for k, v in member.state_dict().items()}, epoch
    member.load_state_dict(best_state)
    for parameter in member.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        dist = torch.full((len(check_states),), index, dtype=torch.long)
        after = model.density(check_states, check_masks,
                              extra=model.adapters.density_term(check_states, check_masks, dist))
    return {"molecules": int(len(rows)), "epochs_kept": best_epoch, "spearman_density_elbo_before": before,
            "spearman_density_elbo_after": spearman(after.numpy(), -checked_elbo)}


@torch.no_grad()
def figures_seconds(model: DiScoFormer, loaded: LoadedModel, graphs: MoleculeGraphs, train: np.ndarray,
                    held: np.ndarray, dist_index: int, size_log_probs: torch.Tensor, config: AdaptConfig) -> float:
    """Seconds that what follows training will take (the density term's ELBOs and fit, the held-out
    table, calibration), from one timed ELBO call on a batch of held-out molecules: drug-like ones cost ten times
    QM9's per noise level, so no fixed allowance fits both."""
    probe = held[:256]  # one batch of the size the figures use: per molecule, larger batches cost more
    held_out_bounds(model, loaded, graphs, probe, dist_index, size_log_probs, 2, config.seed)  # first-call costs
    started = time.perf_counter()
    held_out_bounds(model, loaded, graphs, probe, dist_index, size_log_probs, 2, config.seed)
    per_level = (time.perf_counter() - started) / (2 * max(len(probe), 1))
    checked = min(config.check_molecules, len(held))
    levels = (min(config.density_molecules, len(train)) * config.density_samples  # the density term's ELBOs
              + checked * config.elbo_samples * (len(loaded.distributions) + 2)  # its check, the table's rows
              + len(held) / 2)  # calibration: one forward call each, half an ELBO level
    return FIGURES_MARGIN * per_level * levels


def held_out_batches(graphs: MoleculeGraphs, rows: np.ndarray, dist_index: int, size: int = 256):
    """``rows`` as dense batches of ``size`` molecules, each with its distribution ids (all ``dist_index``)."""
    for start in range(0, len(rows), size):
        batch = graphs.dense(rows[start : start + size])
        yield batch, torch.full((batch.mask.shape[0],), dist_index, dtype=torch.long)


@torch.no_grad()
def held_out_bounds(model: DiScoFormer, loaded: LoadedModel, graphs: MoleculeGraphs, rows: np.ndarray,
                    dist_index: int, size_log_probs: torch.Tensor, samples: int, seed: int) -> np.ndarray:
    """ELBO estimates, the bound on -log P (nats), of ``rows`` under the distribution ``dist_index``."""
    generator = torch.Generator().manual_seed(seed)
    bounds = []
    for batch, dist in held_out_batches(graphs, rows, dist_index):
        bounds.append(elbo(model, batch, dist, loaded.noise, size_log_probs[dist], samples, generator,
                           proposal=loaded.elbo_proposal)[0].numpy())
    return np.concatenate(bounds) if bounds else np.zeros(0)


def nll_figures(bounds: np.ndarray) -> dict:
    """Mean NLL bound (nats/molecule) of the held-out molecules and its standard error over them."""
    return {"nll_nats": float(bounds.mean()) if len(bounds) else None,
            "nll_stderr": float(bounds.std(ddof=1) / math.sqrt(len(bounds))) if len(bounds) > 1 else None}


@torch.no_grad()
def held_out_log_density(model: DiScoFormer, loaded: LoadedModel, graphs: MoleculeGraphs, rows: np.ndarray,
                         dist_index: int) -> np.ndarray:
    """log_density of ``rows`` under the distribution ``dist_index``: one forward call, no ELBO."""
    densities = []
    for batch, dist in held_out_batches(graphs, rows, dist_index):
        densities.append(log_density(model, batch, dist, loaded.noise).numpy())
    return np.concatenate(densities) if densities else np.zeros(0)


def adapt(
    loaded: LoadedModel, encoded: EncodedChunk, smiles: list[str], config: AdaptConfig, base_digest: str,
    base_name: str, work: Path | None = None, log: Callable[[str], None] = lambda message: None,
) -> tuple[dict, dict]:
    """Adapt ``loaded`` to the molecules of ``encoded`` (their canonical ``smiles`` in the same order).
    Returns (the adapter payload to write, its card). With ``work`` (a file) training checkpoints
    there every ``checkpoint_minutes`` and resumes from it."""
    run_started = time.perf_counter()
    if config.rank < 1:
        raise ValueError("adapter rank must be at least 1")
    if len(encoded.positions) < 10:
        raise ValueError(f"only {len(encoded.positions)} molecules of the set fit the base model: adapt needs at least 10")
    from molgen.pyg import MoleculeGraphs

    graphs = MoleculeGraphs.from_dense(encoded.atoms, encoded.bonds, encoded.sizes)
    train, held = split_rows(len(encoded.positions), config.val_fraction, config.seed)
    model = extended(loaded.model.cpu(), config.rank, config.seed)
    index = model.config.adapter.distribution
    sizes = size_distribution(encoded.sizes[train].astype(np.int64), loaded.vocab.max_atoms)
    # The base's rows, the new distribution's, then the null one's: the order of the [DIST] ids.
    size_table = loaded.size_distributions[:-1] + [sizes] + loaded.size_distributions[-1:]
    size_log_probs = torch.log(torch.tensor(size_table, dtype=torch.float32) + 1e-12)
    with torch.no_grad():  # the set's size term, exactly, where the shared head prices sizes as null does
        model.adapters.size_shift.copy_(size_log_probs[index] - size_log_probs[-1])
    parameters = trainable(model)
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    state = {"step": 0, "elapsed": 0.0, "losses": []}
    if work is not None and work.is_file():
        saved = read_checkpoint(work, ADAPTER_FORMAT + "-training")
        load_adapter_weights(model, saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        generator.set_state(saved["generator"])
        rng.bit_generator.state = saved["rng"]
        log(f"resumed at step {state['step']:,}")
    weights = LossWeights(nll=0.0, consistency=0.0)
    figures_estimate = figures_seconds(model, loaded, graphs, train, held, index, size_log_probs, config)
    # The budget is the whole run's: training stops early enough for the figures that follow it.
    training_budget = 60 * config.minutes - figures_estimate - (time.perf_counter() - run_started)
    model.train()
    started, last_save = time.perf_counter() - state["elapsed"], time.perf_counter()

    def save_progress():
        if work is not None:
            save_checkpoint({"weights": adapter_weights(model), "optimizer": optimizer.state_dict(), "state": state,
                             "generator": generator.get_state(), "rng": rng.bit_generator.state},
                            work, ADAPTER_FORMAT + "-training")

    while state["elapsed"] < training_budget and (config.max_steps is None or state["step"] < config.max_steps):
        rows = train[rng.integers(0, len(train), config.batch_size)]
        batch = graphs.dense(rows)
        dist = torch.full((len(rows),), index, dtype=torch.long)
        losses = training_losses(model, batch, dist, loaded.noise, size_log_probs[dist], weights, generator)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        _only_new_row(model)
        optimizer.step()
        state["step"] += 1
        state["losses"].append(float(losses["score"].detach()))
        state["elapsed"] = time.perf_counter() - started
        if state["step"] % 50 == 0:
            log(f"adapt: step {state['step']:,}, score loss {np.mean(state['losses'][-50:]):.3f}, "
                f"{state['elapsed'] / 60:.1f} of {max(training_budget, 0) / 60:.1f} min")
        if time.perf_counter() - last_save > 60 * config.checkpoint_minutes:
            save_progress()
            last_save = time.perf_counter()
    save_progress()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    figures_started = time.perf_counter()
    checked = held[: config.check_molecules]
    log("held-out figures: the new distribution beside the zero-shot rows")
    null_index = model.config.num_distributions
    rows_by = {"adapted": index, "null (zero-shot)": null_index}
    rows_by.update({f"{name} (zero-shot)": position for position, name in enumerate(loaded.distributions)})
    figures = {}
    for label, dist_index in rows_by.items():
        # Every row draws the same noise for the same molecules (the same seed and batches): their
        # differences are the distributions', not the Monte Carlo's.
        bounds = held_out_bounds(model, loaded, graphs, checked, dist_index, size_log_probs, config.elbo_samples,
                                 config.seed)
        figures[label] = nll_figures(bounds)
        if dist_index == index:
            held_out_elbo = bounds
        if dist_index == null_index:
            # The null id under the set's own size histogram: how much of the gain is the sizes alone.
            # Only the size term -log p(n) of the bound changes, so no second pass is needed.
            sizes_of = torch.from_numpy(graphs.sizes[checked].astype(np.int64))
            own_sizes = bounds + (size_log_probs[null_index][sizes_of] - size_log_probs[index][sizes_of]).numpy()
            figures["null (zero-shot, the set's sizes)"] = nll_figures(own_sizes)
    log("fitting the distribution's density term")  # its term leaves the ELBOs above as they are
    density_fit = fit_density_term(model, loaded, graphs, train, checked, held_out_elbo, size_log_probs, config)
    density = held_out_log_density(model, loaded, graphs, held, index)
    calibration = np.quantile(density, np.linspace(0, 1, CALIBRATION_QUANTILES)).tolist()
    card = {
        "name": config.name,
        "base": {"name": base_name, "digest": base_digest},
        "config": config.to_dict(),
        "molecules": {"ok": int(len(encoded.positions)), "train": int(len(train)), "held_out": int(len(held)),
                      "statuses": {status: encoded.status.count(status) for status in sorted(set(encoded.status))}},
        "steps": state["step"],
        "training_seconds": state["elapsed"],
        "final_score_loss": float(np.mean(state["losses"][-50:])) if state["losses"] else None,
        "figures_seconds": {"estimated": figures_estimate, "taken": time.perf_counter() - figures_started},
        "held_out": figures,
        "density_term": density_fit,
    }
    payload = {
        "name": config.name,
        "base_digest": base_digest,
        "base_name": base_name,
        "adapter": asdict(model.config.adapter),
        "weights": adapter_weights(model),
        "size_distribution": sizes,
        "calibration": calibration,
        "train_smiles_hashes": torch.tensor(sorted({smiles_hash(smiles[i]) for i in train}), dtype=torch.int64),
        "card": card,
    }
    return payload, card


def adapt_file(source, output: str | Path, loaded: LoadedModel, base_name: str, config: AdaptConfig,
               smiles_column: str | None = None, workers: int = 1, work: Path | None = None,
               log: Callable[[str], None] = lambda message: None) -> tuple[dict, dict[str, list[str]]]:
    """Adapt ``loaded`` (named ``base_name`` in the file) to the molecule file ``source`` and write the
    adapter to ``output``. Returns its card and the canonical SMILES of its training and held-out parts."""
    if loaded.model.config.adapter.rank:
        raise ValueError(f"{base_name} is itself adapted: adapt its base model instead")
    encoded, smiles = read_set(source, smiles_column, loaded.vocab, workers)
    payload, card = adapt(loaded, encoded, smiles, config, loaded.digest or "", base_name, work, log)
    save_checkpoint(payload, output, ADAPTER_FORMAT)
    train, held = split_rows(len(smiles), config.val_fraction, config.seed)
    return card, {"train": [smiles[i] for i in train], "held_out": [smiles[i] for i in held]}


def adapted_model(base: LoadedModel, payload: dict, path: str = "the adapter") -> LoadedModel:
    """``base`` extended by an adapter file's payload: its distribution added (before the null one)."""
    if payload["base_digest"] != base.digest:
        raise CheckpointError(f"{path} extends the model with digest {payload['base_digest'][:12]}… "
                              f"({payload['base_name']}), not this one ({(base.digest or 'none')[:12]}…): "
                              "load it with the base it was adapted from")
    adapter = AdapterConfig(**payload["adapter"])
    model = extended(base.model.cpu(), adapter.rank)
    load_adapter_weights(model, payload["weights"])
    model.eval()
    name = payload["name"]
    if name in base.distributions:
        raise CheckpointError(f"{path} adds a distribution named {name!r}, which the base has already")
    sizes = base.size_distributions[:-1] + [payload["size_distribution"]] + base.size_distributions[-1:]
    return replace(base, model=model, distributions=base.distributions + [name], size_distributions=sizes,
                   calibration={**base.calibration, name: payload["calibration"]},
                   # Novel: in neither the base's training set nor the adapted set's training part.
                   train_hashes=np.union1d(base.train_hashes if base.train_hashes is not None else [],
                                           payload["train_smiles_hashes"].numpy()).astype(np.int64),
                   meta={**base.meta, "adapter": payload["card"]})


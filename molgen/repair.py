"""Fitting the repair adapter of a trained model, everything else frozen.

Sampling chains settle a molecule's graph at mid noise (log-SNR about -1 to +2 on QM9), and some
settle on a graph that is no molecule: aromatic bonds without a Kekulé structure, an atom over its
valence, two fragments. Once settled the model keeps it: it denoises towards whatever graph the
state is near, and noised real molecules never showed it such a state. Training the whole model on
broken copies of molecules (``--repair-share``, ``--bond-repair-share``) mended some rings and paid
in likelihood on real ones.

The adapter (``DiScoConfig.repair_adapter``) is an MLP over each atom's inputs added to its
embedding only while the previous estimate's argmax graph is no molecule and the noise is below
``repair_min_logsnr`` (:func:`molgen.model.repair_gate`). Whenever the estimate could be a molecule,
the model computes exactly what it did, so the density head of every real molecule is unchanged. It
is fitted here on training molecules, noised at the levels where chains settle, half of them around
a broken copy (one ring atom swapped, one bond over a valence or one bridge removed) with the real
molecule as the target; the loss counts only the molecules whose first estimate opens the gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from molgen.checkpoint import read_checkpoint, save_checkpoint
from molgen.likelihood import upper_pair_mask
from molgen.losses import bond_corrupted, ring_atom_swapped
from molgen.model import DiScoConfig, DiScoFormer, kekule_features, posterior_probs, repair_gate
from molgen.noise import NoiseProcess, q_sample, symmetric_noise
from molgen.tokenizer import GraphBatch, pair_mask_of
from molgen.train import TrainingData


@dataclass
class RepairConfig:
    width: int = 256  # hidden width of the adapter's MLP
    steps: int = 5000
    batch_size: int = 192
    lr: float = 1e-3
    broken_share: float = 0.5  # share of molecules noised around a ring-broken copy, and again a bond-broken one
    min_logsnr: float = -1.5  # the gate stays shut at noisier levels, where no estimate is a molecule yet
    max_logsnr: float = 8.0  # training levels run from min_logsnr up to this
    check_molecules: int = 2000  # held-out molecules on which the mended share is measured
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def with_repair_adapter(model: DiScoFormer, width: int, min_logsnr: float) -> DiScoFormer:
    """``model`` with a new (zero, so inactive) repair adapter of hidden ``width``."""
    return model.with_new_module("repair", repair_adapter=width, repair_min_logsnr=min_logsnr)


def noised_with_estimate(
    model: DiScoFormer, batch: GraphBatch, dist: torch.Tensor, noise: NoiseProcess, config: RepairConfig,
    swaps: torch.Tensor, generator: torch.Generator,
) -> tuple[tuple, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The batch noised at a level where the gate may open, about a broken copy for some molecules:
    the model's inputs (z_atoms, z_bonds, mask, log-SNRs, dist), its first estimate, and the rows
    whose estimate opens the gate."""
    mask = batch.mask
    a, b = model.config.num_atom_types, model.config.num_bond_types
    x_atoms, x_bonds = batch.one_hot(a, b)
    swapped, _ = ring_atom_swapped(model, batch, swaps, config.broken_share, generator)
    corrupted, _ = bond_corrupted(model, batch, config.broken_share, generator)
    source_atoms, source_bonds = GraphBatch(swapped, corrupted, mask).one_hot(a, b)
    # Uniform in log-SNR over the levels where the gate may open (uniform t for a linear schedule).
    top = noise.atoms.t_of_logsnr(torch.tensor(config.max_logsnr))
    bottom = noise.atoms.t_of_logsnr(torch.tensor(config.min_logsnr))
    t = top + (bottom - top) * torch.rand(mask.shape[0], generator=generator)
    z_atoms = q_sample(source_atoms, t, noise.atoms, torch.randn(x_atoms.shape, generator=generator)) * mask[..., None]
    z_bonds = q_sample(source_bonds, t, noise.bonds, symmetric_noise(x_bonds.shape, generator, None, torch.float32))
    inputs = (z_atoms, z_bonds * pair_mask_of(mask)[..., None], mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t),
              dist)
    with torch.no_grad():
        estimate = posterior_probs(model(*inputs), mask)
        rows = (no_molecule(model, *estimate) & (inputs[3] >= model.config.repair_min_logsnr)).nonzero().squeeze(1)
    return inputs, estimate, rows


def no_molecule(model: DiScoFormer, atom_probs: torch.Tensor, bond_probs: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether each estimate's argmax graph is no molecule (:func:`molgen.model.repair_gate`)."""
    kekule = kekule_features(atom_probs, bond_probs, model.valences, model.bond_orders, model.matching_weights)
    return repair_gate(atom_probs, bond_probs, kekule, model.valences, model.bond_orders) > 0


def repair_loss(
    model: DiScoFormer, batch: GraphBatch, dist: torch.Tensor, noise: NoiseProcess, config: RepairConfig,
    swaps: torch.Tensor, generator: torch.Generator,
) -> tuple[torch.Tensor | None, int]:
    """Cross-entropy of the real molecules from the second (self-conditioned) pass, over the molecules
    whose first estimate opens the gate; and how many did (None and 0 when none did)."""
    inputs, (atoms, bonds), rows = noised_with_estimate(model, batch, dist, noise, config, swaps, generator)
    if len(rows) == 0:
        return None, 0
    mask = batch.mask[rows]
    output = model(*(value[rows] for value in inputs), (atoms[rows], bonds[rows]))
    atom_ce = F.cross_entropy(output.atom_logits.transpose(1, 2), batch.atoms[rows], reduction="none")
    bond_ce = F.cross_entropy(output.bond_logits.permute(0, 3, 1, 2), batch.bonds[rows], reduction="none")
    per_molecule = (atom_ce * mask).sum(1) + (bond_ce * upper_pair_mask(mask)).sum((1, 2))
    return per_molecule.mean(), len(rows)


@torch.no_grad()
def mended_share(model: DiScoFormer, data: TrainingData, noise: NoiseProcess, config: RepairConfig,
                 rows: np.ndarray) -> tuple[float, int]:
    """Of the molecules ``rows`` noised as in training (same draws on every call), those whose first
    estimate is no molecule: the share whose self-conditioned second estimate is one, and how many.
    The cross-entropy hardly moves while the adapter learns (it is dominated by what the noise hides),
    so this is the figure that says whether it works."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    swaps = torch.from_numpy(data.vocab.repair_swaps("any"))
    gated = mended = 0
    for start in range(0, len(rows), config.batch_size):
        batch, dist = data.batch(rows[start : start + config.batch_size])
        inputs, (atoms, bonds), chosen = noised_with_estimate(model, batch, dist, noise, config, swaps, generator)
        if len(chosen) == 0:
            continue
        second = posterior_probs(model(*(value[chosen] for value in inputs), (atoms[chosen], bonds[chosen])),
                                 batch.mask[chosen])
        gated += len(chosen)
        mended += int((~no_molecule(model, *second)).sum())
    return mended / max(gated, 1), gated


def fit_repair_adapter(
    model: DiScoFormer, data: TrainingData, noise: NoiseProcess, config: RepairConfig,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Fit ``model``'s repair adapter in place on ``data``'s training molecules; returns the loss of
    the first and last tenth of the steps, how many molecules per batch opened the gate, and the
    share of gated held-out estimates that the next pass makes a molecule, before and after."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parameters = list(model.repair.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    swaps = torch.from_numpy(data.vocab.repair_swaps("any"))
    train = data.indices("train")
    held_out = data.indices("val") if len(data.indices("val")) else data.indices("test")
    check = np.random.default_rng(config.seed + 1).permutation(held_out)[: config.check_molecules]
    model.eval()  # no dropout to switch; eval keeps the frozen model as it samples
    mended_before, _ = mended_share(model, data, noise, config, check)
    losses, gated = [], []
    for step in range(config.steps):
        batch, dist = data.batch(rng.choice(train, config.batch_size))
        loss, count = repair_loss(model, batch, dist, noise, config, swaps, generator)
        gated.append(count)
        if loss is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log(f"repair adapter: step {step + 1}/{config.steps}, loss {np.mean(losses[-100:]):.3f}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    mended_after, check_gated = mended_share(model, data, noise, config, check)
    tenth = max(1, len(losses) // 10)
    return {"config": config.to_dict(), "loss_first_tenth": float(np.mean(losses[:tenth])),
            "loss_last_tenth": float(np.mean(losses[-tenth:])), "gated_per_batch": float(np.mean(gated)),
            "check_molecules": len(check), "check_gated": check_gated, "mended_before": mended_before,
            "mended_after": mended_after}


def repair_checkpoint(
    source: str | Path, data: TrainingData, config: RepairConfig, output: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Give the checkpoint ``source`` (trained on ``data``) a repair adapter, fitted from scratch with
    the rest frozen, and write it to ``output`` (default: in place, atomically)."""
    payload = read_checkpoint(source)
    model = DiScoFormer(DiScoConfig.from_dict(payload["model_config"]))
    if not model.config.kekule_features:
        raise ValueError("the repair adapter needs a model trained with --kekule-features (its gate reads them)")
    if payload["meta"]["data_fingerprints"] != data.fingerprints:
        raise ValueError("the checkpoint was trained on other data (fingerprints differ)")
    model.load_state_dict(payload["ema"])
    with torch.random.fork_rng():  # the adapter's first layer starts random: seeded, so a run repeats
        torch.manual_seed(config.seed)
        model = with_repair_adapter(model, config.width, config.min_logsnr)
    report = fit_repair_adapter(model, data, NoiseProcess.from_dict(payload["noise"]), config, log)
    payload["ema"] = model.state_dict()
    payload["model_config"] = model.config.to_dict()
    payload["meta"]["parameters"] = model.num_parameters()
    payload["meta"]["repair"] = report
    save_checkpoint(payload, output or source)
    return report

"""Training losses of the DiScoFormer, one batch at a time.

  * score: cross-entropy of the clean one-hots under p(z_0 | z_t) (continuous diffusion for
    categorical data, Dieleman et al. 2022), which is denoising score matching at its optimum; the
    DSM loss itself is reported too;
  * nll: the density head at the clean end regressed onto per-molecule ELBO estimates (stop-gradient)
    of some molecules of this same batch. A one-sample estimate at the batch's own noise level is
    unbiased but far too noisy to learn from (its spread was ~400 nats around a mean of ~40 after one
    QM9 epoch, dominated by rare high-SNR draws); ``nll_samples`` stratified times per molecule cut
    the spread to ~16 nats for the price of a few extra no-grad passes on ``nll_molecules`` molecules
    (about a fifth more time per step);
  * consistency: ``||grad_z D(z_t, t) - sg(score(z_t, t))||^2 * sigma_t^2`` along the noise path, so
    that D is an energy whose gradient is the score.

With ``bond_repair_share`` > 0 some molecules' noisy states are drawn around a copy with one bond
changed so that an atom exceeds its valence or the graph falls apart, while the real molecule stays
the target (:func:`molgen.training.corruptions.bond_corrupted`).

The noisy and the clean pass share one forward call (the batch is concatenated with itself).
Every term is a mean over molecules of a per-molecule sum, divided by the maximum atom count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from molgen.likelihood import elbo, upper_pair_mask
from molgen.model import DiScoFormer, ModelOutput, posterior_probs
from molgen.model.density import DENSITY_SCALE
from molgen.training.corruptions import bond_corrupted
from molgen.noise import LogSNRSchedule, NoiseProcess, expand, noised, tweedie_score
from molgen.tokenizer import GraphBatch


@dataclass(frozen=True)
class LossWeights:
    nll: float = 0.1
    consistency: float = 0.01
    self_conditioning_rate: float = 0.5  # share of batches that condition on a first estimate
    consistency_fraction: float = 0.25  # share of each batch that pays for the double backward pass
    nll_molecules: int = 16  # molecules per batch whose ELBO is estimated as the density target
    nll_samples: int = 8  # stratified noise levels per such molecule
    # Share of the molecules whose noisy state is drawn around a copy with one bond over a valence or
    # one bridge removed (see bond_corrupted); 0 turns it off.
    bond_repair_share: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def training_losses(
    model: DiScoFormer,
    batch: GraphBatch,
    dist: torch.Tensor,
    noise: NoiseProcess,
    size_log_probs: torch.Tensor,
    weights: LossWeights,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms of one batch, each a scalar tensor; ``total`` is the one to minimise."""
    config = model.config
    mask = batch.mask
    size, n = mask.shape
    device = mask.device
    x_atoms, x_bonds = batch.one_hot(config.num_atom_types, config.num_bond_types)
    atom_mask, pair_mask = mask.float(), upper_pair_mask(mask).float()

    # Stratified times: one per stratum of [0, 1] lowers the variance of every batch average.
    t = (torch.arange(size, device=device) + torch.rand(size, generator=generator, device=device)) / size
    t = t[torch.randperm(size, generator=generator, device=device)]
    source_bonds, repaired = x_bonds, torch.zeros(size, dtype=torch.bool, device=device)
    if weights.bond_repair_share > 0:
        corrupted, repaired = bond_corrupted(model, batch, weights.bond_repair_share, generator)
        _, source_bonds = GraphBatch(batch.atoms, corrupted, mask).one_hot(config.num_atom_types, config.num_bond_types)
    z_atoms, z_bonds, eps_atoms, eps_bonds = noised(x_atoms, source_bonds, mask, t, noise, generator)

    prev_atoms, prev_bonds = torch.zeros_like(x_atoms), torch.zeros_like(x_bonds)
    use_self_cond = torch.rand((), generator=generator, device=device).item() < weights.self_conditioning_rate
    if config.self_conditioning and use_self_cond:
        with torch.no_grad():
            first = model(z_atoms, z_bonds, mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist)
            prev_atoms, prev_bonds = posterior_probs(first, mask)

    # One forward call: the noisy batch, then the clean batch at t = 0 (self-conditioned on itself).
    zeros = torch.zeros_like(t)
    output = model(
        torch.cat([z_atoms, x_atoms]),
        torch.cat([z_bonds, x_bonds]),
        torch.cat([mask, mask]),
        torch.cat([noise.atoms.logsnr(t), noise.atoms.logsnr(zeros)]),
        torch.cat([noise.bonds.logsnr(t), noise.bonds.logsnr(zeros)]),
        torch.cat([dist, dist]),
        (torch.cat([prev_atoms, x_atoms]), torch.cat([prev_bonds, x_bonds])),
    )
    noisy = ModelOutput(*(field[:size] for field in output))
    atom_logits, bond_logits = noisy.atom_logits, noisy.bond_logits
    # The density regression trains the density head only: its targets are noisy and, early on,
    # thousands of nats apart, and letting them into the shared backbone slowed the score head
    # badly (QM9 epoch 1: score loss 2.6 instead of 1.7). The backbone still shapes D through the
    # consistency loss, whose gradient does flow through it.
    density_clean = model.density(output.final_states[size:].detach(), mask, bound=False)

    atom_ce = F.cross_entropy(atom_logits.transpose(1, 2), batch.atoms, reduction="none") * atom_mask
    bond_ce = F.cross_entropy(bond_logits.permute(0, 3, 1, 2), batch.bonds, reduction="none") * pair_mask
    score_loss = (atom_ce.sum(1) + bond_ce.sum((1, 2))).mean() / n

    atom_probs, bond_probs = posterior_probs(noisy, mask)
    with torch.no_grad():
        dsm = _dsm(z_atoms, atom_probs, eps_atoms, t, noise.atoms, mask[..., None].float()) + _dsm(
            z_bonds, bond_probs, eps_bonds, t, noise.bonds, pair_mask[..., None]
        )
    # The repaired rows' eps belongs to their changed copy, not to the target.
    losses = {"score": score_loss, "dsm": dsm[~repaired].mean() / n if not repaired.all() else dsm.new_zeros(())}
    targets = min(weights.nll_molecules, size)
    if weights.nll > 0 and targets > 0:
        sub = slice(size - targets, size)  # the batch is in random order; the consistency part is first
        sub_batch = GraphBatch(batch.atoms[sub], batch.bonds[sub], mask[sub])
        sizes = size_log_probs[sub] if size_log_probs.dim() == 2 else size_log_probs  # per molecule or shared
        nll, _ = elbo(model, sub_batch, dist[sub], noise, sizes, weights.nll_samples, generator)
        with torch.no_grad():
            model.density.offset.lerp_(-nll.mean(), 0.01)
        scale = DENSITY_SCALE
        # Quadratic (mean-seeking) within one scale, linear beyond, so that early, when ELBOs are
        # thousands of nats apart, the density regression cannot swamp the score's gradients.
        losses["nll"] = F.huber_loss(density_clean[sub] / scale, -nll / scale, delta=1.0)
        losses["elbo"] = nll.mean()
    else:
        losses["nll"] = losses["elbo"] = torch.zeros((), device=device)
    part = int(round(weights.consistency_fraction * size))
    if weights.consistency > 0 and part > 0:
        sub = slice(0, part)  # the batch is already in random order
        losses["consistency"] = consistency_loss(
            model, z_atoms[sub], z_bonds[sub], mask[sub], t[sub], dist[sub], noise,
            (prev_atoms[sub], prev_bonds[sub]), (atom_probs[sub].detach(), bond_probs[sub].detach()),
        )
    else:
        losses["consistency"] = torch.zeros((), device=device)
    losses["total"] = score_loss + weights.nll * losses["nll"] + weights.consistency * losses["consistency"]
    return losses


def consistency_loss(
    model: DiScoFormer,
    z_atoms: torch.Tensor,
    z_bonds: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    dist: torch.Tensor,
    noise: NoiseProcess,
    self_cond: tuple[torch.Tensor, torch.Tensor],
    x0_hat: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``||grad_z D - sg(score)||^2 * sigma_t^2``, per molecule summed, averaged, divided by N."""
    n = mask.shape[1]
    z_atoms = z_atoms.detach().requires_grad_(True)
    z_bonds = z_bonds.detach().requires_grad_(True)
    # The loss differentiates a gradient: the backbone's attention is plain batched products, which
    # have a double backward on every device (CUDA's fused attention kernels have none).
    output = model(z_atoms, z_bonds, mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist, self_cond)
    density = model.density_of(output.final_states, mask, dist, bound=False)  # the bound would offer an escape
    grad_atoms, grad_bonds = torch.autograd.grad(density.sum(), (z_atoms, z_bonds), create_graph=True)
    # A pair is one variable that the model sees twice: its gradient is the sum of both entries.
    grad_bonds = grad_bonds + grad_bonds.transpose(1, 2)
    score_atoms = tweedie_score(z_atoms.detach(), x0_hat[0], t, noise.atoms)
    score_bonds = tweedie_score(z_bonds.detach(), x0_hat[1], t, noise.bonds)
    _, sigma_atoms = noise.atoms.alpha_sigma(t)
    _, sigma_bonds = noise.bonds.alpha_sigma(t)
    atom_mask, pair_mask = mask.float(), upper_pair_mask(mask).float()
    mismatch_atoms = (((grad_atoms - score_atoms) ** 2).sum(-1) * atom_mask).sum(1) * sigma_atoms**2
    mismatch_bonds = (((grad_bonds - score_bonds) ** 2).sum(-1) * pair_mask).sum((1, 2)) * sigma_bonds**2
    return (mismatch_atoms + mismatch_bonds).mean() / n


def _dsm(z, probs, eps, t, schedule: LogSNRSchedule, mask) -> torch.Tensor:
    """Per-molecule ||sigma_t * score + eps||^2: denoising score matching, for the log."""
    _, sigma = schedule.alpha_sigma(t)
    scaled_score = tweedie_score(z.detach(), probs, t, schedule) * expand(sigma, z)
    return (((scaled_score + eps) ** 2) * mask).flatten(1).sum(1)

"""The DiScoFormer as a denoiser: its estimate of the clean molecule at (z_t, t), for the likelihood
and (as :data:`molgen.sampler.Denoiser`) for the sampler."""

from __future__ import annotations

import torch

from molgen.model.discoformer import DiScoFormer, ModelOutput, posterior_probs
from molgen.noise import NoiseProcess
from molgen.sampler import Denoised, Denoiser


def denoise(
    model: DiScoFormer,
    z_atoms: torch.Tensor,
    z_bonds: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    dist: torch.Tensor,
    noise: NoiseProcess,
    self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[ModelOutput, torch.Tensor, torch.Tensor]:
    """The model's output and x0 estimate at (z_t, t).

    A self-conditioned model without a previous estimate first predicts one (no gradient) and then
    conditions on it, as training does half of the time.
    """
    logsnr_atoms, logsnr_bonds = noise.atoms.logsnr(t), noise.bonds.logsnr(t)
    if model.config.self_conditioning and self_cond is None:
        with torch.no_grad():
            first = model(z_atoms, z_bonds, mask, logsnr_atoms, logsnr_bonds, dist)
            self_cond = posterior_probs(first, mask)
    output = model(z_atoms, z_bonds, mask, logsnr_atoms, logsnr_bonds, dist, self_cond)
    atom_probs, bond_probs = posterior_probs(output, mask)
    return output, atom_probs, bond_probs


def model_denoiser(model: DiScoFormer, mask: torch.Tensor, dist: torch.Tensor, noise: NoiseProcess) -> Denoiser:
    """The model as the sampler's :data:`Denoiser` for fixed sizes and distribution ids. The sampler
    feeds each step its previous estimate, so a missing one (the first step) stays zeros."""
    @torch.no_grad()
    def denoised(z_atoms, z_bonds, t, self_cond):
        output = model(z_atoms, z_bonds, mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist, self_cond)
        atoms, bonds = posterior_probs(output, mask)
        return Denoised(atoms, bonds, output.density)

    return denoised

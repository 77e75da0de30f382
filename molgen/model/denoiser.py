"""The DiScoFormer as a denoiser: its estimate of the clean molecule at (z_t, t), for the likelihood
and (as :data:`molgen.sampler.Denoiser`) for the sampler."""

from __future__ import annotations

import torch

from molgen.model.discoformer import DiScoFormer, ModelOutput, posterior_probs
from molgen.guidance import Target, targets_log_likelihood
from molgen.noise import NoiseProcess, mirror_upper
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


def model_denoiser(model: DiScoFormer, mask: torch.Tensor, dist: torch.Tensor, noise: NoiseProcess,
                   targets: tuple[Target, ...] = (), guidance_scale: float = 1.0) -> Denoiser:
    """The model as the sampler's :data:`Denoiser` for fixed sizes and distribution ids. The sampler
    feeds each step its previous estimate, so a missing one (the first step) stays zeros.

    With ``targets`` each call also differentiates the property head's window log-likelihood
    ``log p(y in windows | z_t)`` with respect to the state (the previous estimate held fixed) and returns
    it times ``guidance_scale`` as the sampler's guidance term: a backward pass through the backbone
    per step, about twice the cost of the forward one. A scale of 0 samples unguided (the targets are
    then only checked, by the pipeline)."""
    if targets and model.properties is None:
        raise ValueError("this model has no property head to guide with: fit one with `molgen fit-properties`")

    @torch.no_grad()
    def denoised(z_atoms, z_bonds, t, self_cond):
        output = model(z_atoms, z_bonds, mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist, self_cond)
        atoms, bonds = posterior_probs(output, mask)
        return Denoised(atoms, bonds, output.density)

    def guided(z_atoms, z_bonds, t, self_cond):
        with torch.enable_grad():
            z_atoms, z_bonds = z_atoms.detach().requires_grad_(True), z_bonds.detach().requires_grad_(True)
            output = model(z_atoms, z_bonds, mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist, self_cond)
            prediction = model.properties(output.final_states, mask)
            log_likelihood = targets_log_likelihood(prediction.mean, prediction.std, model.properties.names, targets)
            grad_atoms, grad_bonds = torch.autograd.grad(log_likelihood.sum(), (z_atoms, z_bonds))
        atoms, bonds = posterior_probs(output, mask)
        # The backbone reads each pair once (i < j): the pair's gradient sits on the upper triangle.
        guidance = (guidance_scale * grad_atoms, guidance_scale * mirror_upper(grad_bonds))
        density = output.density.detach() + guidance_scale * log_likelihood.detach()
        return Denoised(atoms.detach(), bonds.detach(), density, guidance)

    return guided if targets and guidance_scale else denoised

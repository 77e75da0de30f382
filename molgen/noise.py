"""Variance-preserving noise process in continuous time, parametrised by log-SNR.

``z_t = alpha_t * z_0 + sigma_t * eps`` with ``alpha_t^2 = sigmoid(lambda_t)`` and
``sigma_t^2 = sigmoid(-lambda_t)``, so ``alpha^2 + sigma^2 = 1`` and ``lambda = log(alpha^2 / sigma^2)``.
``lambda_t`` falls linearly in t from ``logsnr_max`` (t = 0, almost clean) to ``logsnr_min`` (t = 1,
almost pure noise): uniform t is then uniform log-SNR, which is what the likelihood bound integrates
over. Atoms and bonds may have their own schedules (:class:`NoiseProcess`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LogSNRSchedule:
    logsnr_max: float = 9.0
    logsnr_min: float = -9.0

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        return self.logsnr_max + (self.logsnr_min - self.logsnr_max) * t

    def t_of_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        return (logsnr - self.logsnr_max) / (self.logsnr_min - self.logsnr_max)

    @property
    def dlogsnr_dt(self) -> float:
        return self.logsnr_min - self.logsnr_max

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """Elementwise KL(q(z_1 | x0) || N(0, 1)) in nats."""
        alpha, sigma = self.alpha_sigma(torch.ones((), dtype=x0.dtype))
        var = sigma**2
        return 0.5 * (var + (alpha * x0) ** 2 - 1.0 - torch.log(var))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NoiseProcess:
    """One schedule for atom channels, one for bond channels."""

    atoms: LogSNRSchedule = LogSNRSchedule()
    bonds: LogSNRSchedule = LogSNRSchedule()

    def to_dict(self) -> dict:
        return {"atoms": self.atoms.to_dict(), "bonds": self.bonds.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "NoiseProcess":
        return cls(LogSNRSchedule(**data["atoms"]), LogSNRSchedule(**data["bonds"]))


def expand(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-molecule (B,) values broadcast against a (B, ...) tensor."""
    return value.reshape(value.shape + (1,) * (like.dim() - value.dim()))


def mirror_upper(pairs: torch.Tensor) -> torch.Tensor:
    """(B, N, N, C) pair values made symmetric: the pairs i < j kept and mirrored, the diagonal zero."""
    upper = torch.triu(torch.ones(pairs.shape[1], pairs.shape[2], device=pairs.device, dtype=torch.bool), diagonal=1)
    pairs = torch.where(upper[None, :, :, None], pairs, torch.zeros((), device=pairs.device, dtype=pairs.dtype))
    return pairs + pairs.transpose(1, 2)


def symmetric_noise(shape: torch.Size, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Gaussian noise for (B, N, N, C) pair channels, symmetric in the two atom axes."""
    return mirror_upper(torch.randn(shape, generator=generator, device=device, dtype=dtype))


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, schedule: LogSNRSchedule, noise: torch.Tensor
) -> torch.Tensor:
    """A draw of z_t ~ q(z_t | x0) given the standard-normal ``noise``."""
    alpha, sigma = schedule.alpha_sigma(t)
    return expand(alpha, x0) * x0 + expand(sigma, x0) * noise


def noised(
    x_atoms: torch.Tensor, x_bonds: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, process: NoiseProcess,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A draw of q(z_t | x) for clean one-hot atoms (B, N, A) and bonds (B, N, N, C) at times ``t`` (B,):
    ``(z_atoms, z_bonds, eps_atoms, eps_bonds)``, the noise zero where ``mask`` (B, N) has no atom or
    pair. The atom noise is drawn first, then the pair noise symmetric in the two atom axes: a seeded
    caller gets the same draw wherever it noises a batch."""
    from molgen.tokenizer import pair_mask_of  # the tokenizer carries RDKit; the schedules above do not need it

    eps_atoms = torch.randn(x_atoms.shape, generator=generator, device=x_atoms.device, dtype=x_atoms.dtype)
    eps_atoms = eps_atoms * mask[..., None].to(x_atoms.dtype)
    eps_bonds = symmetric_noise(x_bonds.shape, generator, x_bonds.device, x_bonds.dtype)
    eps_bonds = eps_bonds * pair_mask_of(mask)[..., None].to(x_bonds.dtype)
    return (q_sample(x_atoms, t, process.atoms, eps_atoms), q_sample(x_bonds, t, process.bonds, eps_bonds),
            eps_atoms, eps_bonds)


def posterior(
    z_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, schedule: LogSNRSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(z_s | z_t, x0) for s < t (Kingma et al. 2021, eq. 32-34)."""
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    alpha_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    mean = expand(alpha_ts * sigma_s**2 / sigma_t**2, z_t) * z_t + expand(alpha_s * var_ts / sigma_t**2, x0) * x0
    var = var_ts * sigma_s**2 / sigma_t**2
    return mean, expand(var, z_t)


def tweedie_score(z_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, schedule: LogSNRSchedule) -> torch.Tensor:
    """grad log p_t(z_t) = (alpha_t * E[x0 | z_t] - z_t) / sigma_t^2."""
    alpha, sigma = schedule.alpha_sigma(t)
    return (expand(alpha, z_t) * x0_hat - z_t) / expand(sigma**2, z_t)

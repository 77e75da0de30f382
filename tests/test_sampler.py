import numpy as np
import pytest
import torch

from molgen.noise import NoiseProcess
from molgen.sampler import Denoised, SamplerSettings, draw_one_hot, sample

# Two "molecules" of two atoms over two atom types: (type 0, type 1, single bond), (1, 1, double).
ATOMS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
BONDS = torch.zeros(2, 2, 2, 4)
BONDS[0, 0, 1, 1] = BONDS[0, 1, 0, 1] = 1.0
BONDS[1, 0, 1, 2] = BONDS[1, 1, 0, 2] = 1.0
NOISE = NoiseProcess()


def mixture_denoiser(weights: tuple[float, float]):
    """The exact posterior mean and log-density of the two-point data distribution with these weights."""
    log_weights = torch.log(torch.tensor(weights))

    def denoise(z_atoms, z_bonds, t, self_cond):
        alpha, sigma = NOISE.atoms.alpha_sigma(t)
        alpha, sigma = alpha[:, None], sigma[:, None]
        distance = ((z_atoms[:, None] - alpha[..., None, None] * ATOMS) ** 2).sum((2, 3)) + 0.5 * (
            (z_bonds[:, None] - alpha[..., None, None, None] * BONDS) ** 2
        ).sum((2, 3, 4))
        log_components = -distance / (2 * sigma**2) + log_weights
        posterior_weights = torch.softmax(log_components, dim=1)
        atoms = torch.einsum("bk,knc->bnc", posterior_weights, ATOMS)
        bonds = torch.einsum("bk,knmc->bnmc", posterior_weights, BONDS)
        return Denoised(atoms, bonds, torch.logsumexp(log_components, dim=1))

    return denoise


exact_denoiser = mixture_denoiser((0.5, 0.5))


def shares(result) -> tuple[float, float]:
    """Shares of the samples that decode to the first and to the second data point."""
    first = (result.atoms[:, 0].argmax(-1) == 0) & (result.bonds[:, 0, 1].argmax(-1) == 1)
    second = (result.atoms[:, 0].argmax(-1) == 1) & (result.bonds[:, 0, 1].argmax(-1) == 2)
    return first.float().mean().item(), second.float().mean().item()


def run(settings, seed, size=400, denoiser=exact_denoiser):
    mask = torch.ones(size, 2, dtype=torch.bool)
    return sample(denoiser, mask, 2, 4, NOISE, settings, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("settings", [SamplerSettings(steps=50), SamplerSettings(steps=30, corrector_steps=1, snr=0.1)])
def test_exact_denoiser_samples_the_two_molecules_in_equal_shares(settings):
    first, second = shares(run(settings, seed=0))
    assert first + second == pytest.approx(1.0)  # only the data points come out
    assert 0.4 < first < 0.6


def test_lower_temperature_concentrates_on_the_more_likely_molecule():
    denoiser = mixture_denoiser((0.75, 0.25))
    as_trained = shares(run(SamplerSettings(steps=50), seed=0, size=1000, denoiser=denoiser))
    cooled = shares(run(SamplerSettings(steps=50, temperature=0.5), seed=0, size=1000, denoiser=denoiser))
    assert sum(as_trained) == pytest.approx(1.0) and sum(cooled) == pytest.approx(1.0)
    assert 0.68 < as_trained[0] < 0.85
    assert cooled[0] > 0.9


def test_same_seed_same_samples_other_seed_other_samples():
    settings = SamplerSettings(steps=20, corrector_steps=1)
    a, b, c = run(settings, 1, 64), run(settings, 1, 64), run(settings, 2, 64)
    assert torch.equal(a.atoms, b.atoms) and torch.equal(a.bonds, b.bonds)
    assert not torch.equal(a.atoms, c.atoms)


def test_mala_acceptance_is_reported_and_a_probability():
    result = run(SamplerSettings(steps=20, corrector_steps=1, snr=0.2, mala=True), seed=0, size=200)
    assert result.corrector_moves == 200 * 20
    assert 0.0 < result.acceptance_rate < 1.0
    assert result.acceptance_rate > 0.5  # the exact energy makes most small moves acceptable
    unadjusted = run(SamplerSettings(steps=20, corrector_steps=1, snr=0.2), seed=0, size=200)
    assert unadjusted.acceptance_rate == 1.0


def test_bond_channels_stay_symmetric_and_padding_zero():
    mask = torch.tensor([[True, True], [True, False]])
    result = sample(exact_denoiser, mask, 2, 4, NOISE, SamplerSettings(steps=5), torch.Generator().manual_seed(0))
    assert torch.allclose(result.bonds, result.bonds.transpose(1, 2))
    assert np.isfinite(result.atoms.numpy()).all()


def test_the_predictor_samples_the_two_molecules_in_their_shares():
    denoiser = mixture_denoiser((0.75, 0.25))
    first, second = shares(run(SamplerSettings(steps=50), seed=0, size=1000, denoiser=denoiser))
    assert first + second == pytest.approx(1.0)
    assert 0.68 < first < 0.82


def test_the_drawn_estimate_is_deterministic_under_a_seed():
    drawn, again = run(SamplerSettings(steps=20), 3, 64), run(SamplerSettings(steps=20), 3, 64)
    other = run(SamplerSettings(steps=20), 4, 64)
    assert torch.equal(drawn.atoms, again.atoms)
    assert not torch.equal(drawn.atoms, other.atoms)


def test_draw_one_hot_follows_the_probabilities_and_keeps_bonds_symmetric():
    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.3]).expand(20000, 3)
    hot = draw_one_hot(probs, generator, symmetric=False)
    assert torch.equal(hot.sum(-1), torch.ones(20000))
    assert torch.allclose(hot.mean(0), probs[0], atol=0.015)
    padding = draw_one_hot(torch.zeros(4, 3), generator, symmetric=False)
    assert torch.equal(padding.sum(-1), torch.ones(4))  # category 0: the caller masks padding
    bonds = torch.softmax(torch.randn(500, 4, 4, 5, generator=generator), -1)
    bonds = (bonds + bonds.transpose(1, 2)) / 2
    drawn = draw_one_hot(bonds, generator, symmetric=True)
    assert torch.equal(drawn, drawn.transpose(1, 2))
    assert drawn.diagonal(dim1=1, dim2=2).abs().sum() == 0
    upper = torch.ones(4, 4).triu(1).bool()
    assert torch.equal(drawn[:, upper].sum(-1), torch.ones(500, 6))
    assert torch.allclose(drawn[:, upper].mean((0, 1)), bonds[:, upper].mean((0, 1)), atol=0.02)

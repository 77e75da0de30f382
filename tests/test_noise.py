import torch

from molgen.noise import LogSNRSchedule, NoiseProcess, noised, posterior, tweedie_score
from molgen.tokenizer import pair_mask_of


def test_tweedie_score_is_the_exact_score_of_a_two_molecule_distribution():
    """Data = two one-hot states with equal weight. With the exact posterior mean in place of the
    model, Tweedie's formula must equal grad log p_t(z) computed by autograd."""
    schedule = LogSNRSchedule()
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    for t_value in (0.2, 0.5, 0.8):
        t = torch.tensor([t_value])
        alpha, sigma = schedule.alpha_sigma(t)
        z = (alpha * x[0] + sigma * torch.randn(4, generator=torch.Generator().manual_seed(1)))[None]
        z.requires_grad_(True)
        log_components = -((z - alpha * x) ** 2).sum(-1) / (2 * sigma**2)  # equal weights, shared normaliser
        (grad,) = torch.autograd.grad(torch.logsumexp(log_components, 0), z)
        weights = torch.softmax(log_components.detach(), 0)
        exact_mean = (weights[:, None] * x).sum(0, keepdim=True)
        assert torch.allclose(tweedie_score(z.detach(), exact_mean, t, schedule), grad, atol=1e-4, rtol=1e-4)


def test_gaussian_posterior_matches_conditioning():
    schedule = LogSNRSchedule()
    x0, z_t = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.1, 0.7]])
    s, t = torch.tensor([0.3]), torch.tensor([0.6])
    mean, var = posterior(z_t, x0, t, s, schedule)
    (alpha_s, sigma_s), (alpha_t, sigma_t) = schedule.alpha_sigma(s), schedule.alpha_sigma(t)
    cov = alpha_t / alpha_s * sigma_s**2  # Cov(z_s, z_t | x0)
    assert torch.allclose(mean, alpha_s * x0 + cov / sigma_t**2 * (z_t - alpha_t * x0), atol=1e-6)
    assert torch.allclose(var.squeeze(), sigma_s**2 - cov**2 / sigma_t**2, atol=1e-6)


def test_noised_draws_symmetric_pair_noise_zero_at_padding_and_repeats_under_a_seed():
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    x_atoms = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 0], [2, 2, 0, 0]]), 3).float() * mask[..., None]
    x_bonds = torch.nn.functional.one_hot(torch.ones(2, 4, 4, dtype=torch.long), 4).float() * pair_mask_of(mask)[..., None]
    t = torch.tensor([0.3, 0.9])
    process = NoiseProcess(bonds=LogSNRSchedule(7.0, -7.0))  # each channel its own schedule

    def draw(seed):
        return noised(x_atoms, x_bonds, mask, t, process, torch.Generator().manual_seed(seed))

    z_atoms, z_bonds, eps_atoms, eps_bonds = draw(5)
    assert all(torch.equal(a, b) for a, b in zip(draw(5), (z_atoms, z_bonds, eps_atoms, eps_bonds)))
    assert not torch.equal(draw(6)[0], z_atoms)
    assert torch.equal(z_bonds, z_bonds.transpose(1, 2)) and torch.equal(eps_bonds, eps_bonds.transpose(1, 2))
    assert (z_atoms[~mask] == 0).all() and (z_bonds[~pair_mask_of(mask)] == 0).all()
    for x, z, eps, schedule in ((x_atoms, z_atoms, eps_atoms, process.atoms), (x_bonds, z_bonds, eps_bonds, process.bonds)):
        alpha, sigma = schedule.alpha_sigma(t)
        shape = (2,) + (1,) * (x.dim() - 1)
        assert torch.allclose(z, alpha.reshape(shape) * x + sigma.reshape(shape) * eps)

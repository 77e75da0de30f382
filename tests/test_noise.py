import torch

from molgen.noise import LogSNRSchedule, posterior, tweedie_score


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

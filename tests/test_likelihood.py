import math

import pytest
import torch
from tiny_model import SMILES

from molgen.likelihood import constant_terms, elbo
from molgen.noise import NoiseProcess


def test_elbo_is_finite_with_standard_errors_and_sensible_constants(tiny):
    vocab, batch, model = tiny
    dist = torch.zeros(len(SMILES), dtype=torch.long)
    size_log_probs = torch.log(torch.full((10,), 0.1))
    estimate, stderr = elbo(model, batch, dist, NoiseProcess(), size_log_probs, num_samples=4,
                            generator=torch.Generator().manual_seed(0))
    assert estimate.shape == stderr.shape == (len(SMILES),)
    assert torch.isfinite(estimate).all() and (stderr >= 0).all()
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    constants = constant_terms(x_atoms, x_bonds, batch.mask, NoiseProcess(), size_log_probs)
    # Prior KL and reconstruction are tiny at log-SNR -9 / +9; the size term is log 10.
    assert torch.allclose(constants, torch.full_like(constants, math.log(10)), atol=0.1)
    assert (estimate > constants).all()


def test_stratified_stderr_counts_the_spread_within_strata_not_between_them():
    from molgen.likelihood import stratified_stderr

    generator = torch.Generator().manual_seed(0)
    k = 256
    trend = 10.0 * torch.arange(k) / k  # strata means that differ, as the integrand's do over noise levels
    values = trend + torch.randn(400, k, generator=generator)  # unit noise within each stratum
    truth = 1.0 / math.sqrt(k)  # the mean's standard error: only the within-stratum noise varies
    assert abs(stratified_stderr(values).mean().item() / truth - 1) < 0.05
    assert (values.std(1) / math.sqrt(k)).mean().item() > 1.5 * truth  # the independent-draws formula
    odd = stratified_stderr(values[:, :7])
    assert odd.shape == (400,) and torch.isfinite(odd).all() and (odd > 0).all()
    assert torch.equal(stratified_stderr(values[:, :1]), torch.zeros(400))


def test_elbo_standard_error_matches_the_spread_of_its_estimates(tiny):
    vocab, batch, model = tiny
    dist = torch.zeros(len(SMILES), dtype=torch.long)
    size_log_probs = torch.log(torch.full((10,), 0.1))
    runs = [elbo(model, batch, dist, NoiseProcess(), size_log_probs, 32, torch.Generator().manual_seed(s)) for s in range(12)]
    spread = torch.stack([estimate for estimate, _ in runs]).std(0)
    reported = torch.stack([stderr for _, stderr in runs]).pow(2).mean(0).sqrt()
    ratio = reported.pow(2).mean().sqrt() / spread.pow(2).mean().sqrt()
    assert 0.6 < ratio < 1.6, ratio


def test_stratified_importance_times_integrate_exactly_enough_under_any_proposal():
    from molgen.likelihood import stratified_times

    proposal = torch.tensor([5.0, 1.0, 0.2, 3.0, 0.5, 0.5, 2.0, 1.0])
    t, density = stratified_times(64, 256, 0.2, proposal, torch.Generator().manual_seed(0), "cpu")
    assert (t >= 0.2).all() and (t <= 1.0).all()
    # Each molecule's importance-weighted mean of g(t) = t^2 estimates its integral over [0.2, 1].
    estimates = (t**2 / density).mean(dim=1)
    exact = (1 - 0.2**3) / 3
    assert torch.allclose(estimates, torch.full_like(estimates, exact), rtol=0.05)
    assert abs(estimates.mean().item() - exact) < 0.005 * exact  # unbiased: the average is on the spot
    uniform_t, uniform_density = stratified_times(4, 8, 0.2, None, torch.Generator().manual_seed(0), "cpu")
    assert torch.allclose(uniform_density, torch.full_like(uniform_density, 1 / 0.8))


def test_elbo_under_an_importance_proposal_agrees_with_the_uniform_one_on_average(tiny):
    from molgen.likelihood import importance_proposal

    vocab, batch, model = tiny
    dist = torch.zeros(len(SMILES), dtype=torch.long)
    size_log_probs = torch.log(torch.full((10,), 0.1))
    proposal = importance_proposal(model, batch, dist, NoiseProcess(), bins=8, draws_per_bin=2,
                                   generator=torch.Generator().manual_seed(1))
    assert proposal.shape == (8,) and (proposal > 0).all() and math.isclose(proposal.sum().item(), 1, rel_tol=1e-5)
    uniform = [elbo(model, batch, dist, NoiseProcess(), size_log_probs, 32, torch.Generator().manual_seed(s))[0]
               for s in range(6)]
    weighted = [elbo(model, batch, dist, NoiseProcess(), size_log_probs, 32, torch.Generator().manual_seed(s),
                     proposal=proposal)[0] for s in range(6)]
    assert torch.allclose(torch.stack(uniform).mean(0), torch.stack(weighted).mean(0), rtol=0.1)


def test_importance_proposal_spends_levels_where_the_integrand_spreads_not_where_it_is_large(tiny, monkeypatch):
    import molgen.likelihood as likelihood

    vocab, batch, model = tiny
    dist = torch.zeros(len(SMILES), dtype=torch.long)

    def integrand(model, x_atoms, x_bonds, mask, t, dist, noise, generator):
        # Large but certain at the noisy half of the bins, small and random at the clean half: stratified
        # levels learn nothing more from the first, so they belong in the second.
        return torch.where(t < 0.5, torch.full_like(t, 100.0), torch.randn(t.shape, generator=generator))

    monkeypatch.setattr(likelihood, "diffusion_integrand", integrand)
    proposal = likelihood.importance_proposal(model, batch, dist, NoiseProcess(), bins=8, draws_per_bin=4,
                                              generator=torch.Generator().manual_seed(0), clean_logsnr=None)
    assert torch.allclose(proposal[:4], torch.full((4,), 0.1 / 8))  # the uniform floor alone
    assert math.isclose(proposal[4:].sum().item(), 0.9 + 0.05, rel_tol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        likelihood.importance_proposal(model, batch, dist, NoiseProcess(), bins=8, draws_per_bin=1)


def test_elbo_gives_the_same_estimate_whether_levels_share_a_forward_call_or_not(tiny):
    vocab, batch, model = tiny
    dist = torch.zeros(len(SMILES), dtype=torch.long)
    size_log_probs = torch.log(torch.full((10,), 0.1))

    def estimates(rows):
        return torch.stack([elbo(model, batch, dist, NoiseProcess(), size_log_probs, 32,
                                 torch.Generator().manual_seed(s), max_rows=rows)[0] for s in range(6)])

    one_level_per_call, three_per_call, all_in_one = estimates(len(SMILES)), estimates(3 * len(SMILES)), estimates(4096)
    assert one_level_per_call.shape == three_per_call.shape == all_in_one.shape == (6, len(SMILES))
    assert torch.isfinite(three_per_call).all()  # 32 levels in chunks of 3: the last chunk is short
    assert torch.allclose(one_level_per_call.mean(0), all_in_one.mean(0), rtol=0.1)
    assert torch.allclose(three_per_call.mean(0), all_in_one.mean(0), rtol=0.1)

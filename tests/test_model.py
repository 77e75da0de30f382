import copy
import math

import pytest
import torch

from molgen.checkpoint import load_model, read_checkpoint, save_checkpoint
from molgen.chemistry import parse_smiles
from molgen.likelihood import constant_terms, elbo, log_density
from molgen.model import (
    KEKULE_FEATURES,
    RING_WALK_LENGTHS,
    DiScoConfig,
    DiScoFormer,
    PairLayout,
    denoise,
    kekule_features,
    ring_features,
)
from molgen.noise import LogSNRSchedule, NoiseProcess, posterior, q_sample, symmetric_noise, tweedie_score
from molgen.tokenizer import Vocabulary, collate, encode, molecular_graph, pair_mask_of

SMILES = ["C", "CO", "C#N", "C[N+](=O)[O-]", "c1ccoc1", "OC1CC1", "CC(=O)NC", "N#CC(F)F"]


@pytest.fixture(scope="module")
def setup():
    mols = [parse_smiles(s) for s in SMILES]
    vocab = Vocabulary.from_graphs((molecular_graph(m) for m in mols), max_atoms=9)
    batch = collate([encode(m, vocab) for m in mols], vocab.max_atoms)
    config = DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences),
                         num_distributions=2, d_model=32, d_pair=8, n_layers=2, n_heads=4, d_ff=64)
    torch.manual_seed(0)
    return vocab, batch, DiScoFormer(config).eval()


def noisy_inputs(batch, vocab, t, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    noise = NoiseProcess()
    z_atoms = q_sample(x_atoms, t, noise.atoms, torch.randn(x_atoms.shape, generator=generator)) * batch.mask[..., None]
    z_bonds = q_sample(x_bonds, t, noise.bonds, symmetric_noise(x_bonds.shape, generator, "cpu", torch.float32))
    return z_atoms, z_bonds, noise


def test_heads_have_the_right_shapes_are_finite_and_symmetric(setup):
    vocab, batch, model = setup
    size = batch.mask.shape[0]
    t = torch.linspace(0.01, 0.99, size)
    z_atoms, z_bonds, noise = noisy_inputs(batch, vocab, t)
    dist = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # 2 is the null distribution
    output, atom_probs, bond_probs = denoise(model, z_atoms, z_bonds, batch.mask, t, dist, noise)
    assert output.atom_logits.shape == (size, 9, vocab.num_atom_types)
    assert output.bond_logits.shape == (size, 9, 9, 4)
    assert output.density.shape == (size,)
    for tensor in output:
        assert torch.isfinite(tensor).all()
    assert torch.allclose(output.bond_logits, output.bond_logits.transpose(1, 2))
    score = tweedie_score(z_atoms, atom_probs, t, noise.atoms)
    assert score.shape == z_atoms.shape and torch.isfinite(score).all()
    # Padding does not leak: changing a padded atom's input changes nothing real.
    changed = z_atoms.clone()
    changed[0, 5] += 3.0  # molecule 0 has one atom
    again, _, _ = denoise(model, changed, z_bonds, batch.mask, t, dist, noise)
    assert torch.allclose(again.atom_logits[0, :1], output.atom_logits[0, :1], atol=1e-5)
    assert torch.allclose(again.density, output.density, atol=1e-4)


def clean_inputs(batch, vocab):
    """Model inputs of the clean molecules at t = 0 under distribution 0 (x_atoms, x_bonds, mask,
    atom and bond log-SNRs, dist), and the noise process."""
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    noise = NoiseProcess()
    t = torch.zeros(batch.mask.shape[0])
    dist = torch.zeros_like(t, dtype=torch.long)
    return (x_atoms, x_bonds, batch.mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist), noise


def test_log_density_skips_the_last_pair_update_without_changing_the_density(setup):
    vocab, batch, model = setup
    inputs, noise = clean_inputs(batch, vocab)
    itself = inputs[:2]  # self-conditioned on the clean molecule, as scoring does
    with torch.no_grad():
        full = model(*inputs, itself)
        states, pairs = model.token_states(*inputs, itself, final_pairs=False)
        assert pairs is None
        torch.testing.assert_close(states, full.final_states)
        torch.testing.assert_close(log_density(model, batch, inputs[-1], noise), full.density)


def dense_block(block, h, pairs, key_mask, pair_mask, time):
    """A block written over the full (B, N, N, dp) pair square, as the packed one stands for."""
    batch, tokens, d = h.shape
    shift1, scale1, shift2, scale2 = block.modulation(time)[:, None, :].chunk(4, dim=-1)
    x = block.norm1(h) * (1 + scale1) + shift1
    q, k, v = block.qkv(x).view(batch, tokens, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
    bias = torch.zeros(batch, block.heads, tokens, tokens)
    bias[:, :, 2:, 2:] = block.pair_bias(pairs).permute(0, 3, 1, 2)
    bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    h = h + block.out(attended.transpose(1, 2).reshape(batch, tokens, d))
    mean = (pairs * pair_mask).sum(dim=2) / pair_mask.sum(dim=2).clamp(min=1.0)
    h = h + torch.nn.functional.pad(block.pair_to_atom(mean), (0, 0, 2, 0))
    h = h + block.ff(block.norm2(h) * (1 + scale2) + shift2)
    left, right = block.pair_left(h[:, 2:]), block.pair_right(h[:, 2:])
    outer = left[:, :, None] * right[:, None, :]
    pairs = pairs + 0.5 * (outer + outer.transpose(1, 2))
    return h, (pairs + block.pair_ff(block.pair_norm(pairs))) * pair_mask


def test_blocks_on_packed_pairs_equal_the_dense_pair_square(setup):
    vocab, batch, model = setup
    model = copy.deepcopy(model)
    layout = PairLayout(batch.mask, torch.float32)
    pair_mask = pair_mask_of(batch.mask)[..., None].float()
    generator = torch.Generator().manual_seed(0)
    square = torch.randn(*pair_mask.shape[:3], model.config.d_pair, generator=generator)
    square = (square + square.transpose(1, 2)) * pair_mask  # what the backbone holds: symmetric, masked
    packed = layout.pack(square)
    assert packed.shape == (batch.mask.shape[0], 9 * 8 // 2, model.config.d_pair)
    torch.testing.assert_close(layout.unpack(packed), square, rtol=0, atol=0)
    torch.testing.assert_close(layout.degree, pair_mask.sum(dim=2).clamp(min=1.0))  # no 0/0 for padding
    h = torch.randn(batch.mask.shape[0], 11, model.config.d_model, generator=generator)
    time = torch.randn(batch.mask.shape[0], model.config.d_model, generator=generator)
    key_mask = torch.cat([torch.ones(batch.mask.shape[0], 2, dtype=torch.bool), batch.mask], dim=1)
    with torch.no_grad():
        for block in model.blocks:
            block.modulation.weight.normal_(generator=generator)  # trained blocks modulate; fresh ones do not
            h_packed, packed = block(h, packed, key_mask, layout, time)
            h, square = dense_block(block, h, square, key_mask, pair_mask, time)
            torch.testing.assert_close(h_packed, h)
            torch.testing.assert_close(layout.unpack(packed), square)


def test_density_atom_terms_start_at_zero_and_sum_over_real_atoms_only(setup):
    from molgen.distill import with_atom_terms

    vocab, batch, model = setup
    inputs, _ = clean_inputs(batch, vocab)

    def density(of):
        return of(*inputs).density

    upgraded = with_atom_terms(model).eval()
    assert upgraded.config.density_atom_terms and not model.config.density_atom_terms
    with torch.no_grad():
        torch.testing.assert_close(density(upgraded), density(model))  # zero-initialised: D unchanged
        upgraded.density_atom_head[-1].bias.fill_(1.0)  # each real atom now adds one raw unit
        added = density(upgraded) - density(model)
    expected = batch.mask.sum(1).float() * model.config.density_scale
    torch.testing.assert_close(added, expected)
    assert len(set(batch.mask.sum(1).tolist())) > 1  # molecules of several sizes, so padding is exercised


def test_a_density_member_is_added_with_every_weight_kept_and_d_is_the_members_mean(setup):
    from molgen.distill import with_atom_terms

    vocab, batch, model = setup
    inputs, _ = clean_inputs(batch, vocab)
    base = with_atom_terms(model).eval()
    grown = base.with_density_members(1).eval()
    assert grown.config.density_members == 2 and base.config.density_members == 1
    with torch.no_grad():
        output = grown(*inputs)
        first = grown.density_of(output.final_states, batch.mask, members=[0])
        second = grown.density_of(output.final_states, batch.mask, members=[1])
        torch.testing.assert_close(first, base(*inputs).density)  # the old head is member 0, unchanged
        torch.testing.assert_close(output.density, (first + second) / 2)
    assert not torch.allclose(first, second)  # the new member starts fresh, not as a copy
    own, old = {id(p) for p in grown.density_parameters([1])}, {id(p) for p in grown.density_parameters([0])}
    assert own and old and own.isdisjoint(old)
    assert {id(p) for p in grown.density_parameters()} == own | old


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


def test_elbo_is_finite_with_standard_errors_and_sensible_constants(setup):
    vocab, batch, model = setup
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


def test_elbo_standard_error_matches_the_spread_of_its_estimates(setup):
    vocab, batch, model = setup
    dist = torch.zeros(len(SMILES), dtype=torch.long)
    size_log_probs = torch.log(torch.full((10,), 0.1))
    runs = [elbo(model, batch, dist, NoiseProcess(), size_log_probs, 32, torch.Generator().manual_seed(s)) for s in range(12)]
    spread = torch.stack([estimate for estimate, _ in runs]).std(0)
    reported = torch.stack([stderr for _, stderr in runs]).pow(2).mean(0).sqrt()
    ratio = reported.pow(2).mean().sqrt() / spread.pow(2).mean().sqrt()
    assert 0.6 < ratio < 1.6, ratio


def test_save_then_load_gives_identical_outputs(setup, tmp_path):
    vocab, batch, model = setup
    noise = NoiseProcess()
    path = tmp_path / "model.pt"
    save_checkpoint({
        "model_config": model.config.to_dict(), "vocab": vocab.to_dict(), "noise": noise.to_dict(),
        "distributions": ["a", "b"], "size_distributions": [[0.1] * 10] * 3, "ema": model.state_dict(),
    }, path)
    loaded = load_model(path)
    dist = torch.zeros(len(SMILES), dtype=torch.long)
    assert torch.equal(log_density(model, batch, dist, noise), log_density(loaded.model, batch, dist, loaded.noise))
    assert loaded.vocab == vocab
    with pytest.raises(ValueError, match="not a checkpoint: not a PyTorch file"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        read_checkpoint(tmp_path / "junk.pt")


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


def test_elbo_under_an_importance_proposal_agrees_with_the_uniform_one_on_average(setup):
    from molgen.likelihood import importance_proposal

    vocab, batch, model = setup
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


def test_importance_proposal_spends_levels_where_the_integrand_spreads_not_where_it_is_large(setup, monkeypatch):
    import molgen.likelihood as likelihood

    vocab, batch, model = setup
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


def test_elbo_gives_the_same_estimate_whether_levels_share_a_forward_call_or_not(setup):
    vocab, batch, model = setup
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


def test_ring_features_count_closed_walks_of_the_estimated_graph(setup):
    vocab, _, _ = setup
    mols = [parse_smiles(s) for s in ("CCC", "C1CC1", "c1ccoc1")]
    batch = collate([encode(m, vocab) for m in mols], vocab.max_atoms)
    _, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    features = ring_features(x_bonds * pair_mask_of(batch.mask)[..., None])
    assert features.shape == (3, 9, len(RING_WALK_LENGTHS))
    walks = torch.expm1(features)
    # A chain closes no odd walk; each atom of a triangle closes 2 walks of length 3 (both ways
    # round); each atom of a 5-ring closes 2 of length 5; padding sees nothing.
    assert torch.allclose(walks[0, :3, 0], torch.zeros(3), atol=1e-5)
    assert torch.allclose(walks[1, :3, 0], torch.full((3,), 2.0), atol=1e-5)
    assert torch.allclose(walks[2, :5, 2], torch.full((5,), 2.0), atol=1e-5)
    assert torch.allclose(walks[2, :5, 0], torch.zeros(5), atol=1e-5)
    assert torch.equal(walks[:, 5:], torch.zeros_like(walks[:, 5:]))


def test_a_model_with_ring_features_runs_saves_and_reloads(setup, tmp_path):
    vocab, batch, _ = setup
    config = DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences), d_model=32, d_pair=8,
                         n_layers=2, n_heads=4, d_ff=64, ring_features=True)
    torch.manual_seed(0)
    model = DiScoFormer(config).eval()
    t = torch.full((batch.mask.shape[0],), 0.3)
    z_atoms, z_bonds, noise = noisy_inputs(batch, vocab, t)
    dist = torch.zeros(batch.mask.shape[0], dtype=torch.long)
    output, _, _ = denoise(model, z_atoms, z_bonds, batch.mask, t, dist, noise)
    assert all(torch.isfinite(tensor).all() for tensor in output)
    assert DiScoConfig.from_dict(config.to_dict()) == config
    # Configs written before the option existed load as models without it.
    legacy = {key: value for key, value in config.to_dict().items() if key != "ring_features"}
    assert DiScoConfig.from_dict(legacy).ring_features is False


def aromatic_graphs(smiles_list):
    """Aromatic-vocabulary one-hots of ``smiles_list``, with the vocabulary (valences, bond orders)."""
    graphs = [molecular_graph(parse_smiles(s), aromatic_bonds=True) for s in smiles_list]
    vocab = Vocabulary.from_graphs(graphs, max_atoms=9, aromatic_bonds=True)
    batch = collate([encode(parse_smiles(s), vocab) for s in smiles_list], 9)
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    inputs = (torch.tensor(vocab.max_valences, dtype=torch.float32), torch.tensor(vocab.bond_orders))
    return vocab, x_atoms * batch.mask[..., None], x_bonds, inputs


MATCHING_WEIGHTS = torch.rand(9, 9, generator=torch.Generator().manual_seed(0)).double() + 1.0


def test_kekule_features_are_quiet_on_real_aromatic_molecules():
    smiles = ["c1cc[nH]c1", "c1ccncc1", "c1ccoc1", "c1ccc2[nH]ccc2c1", "Cc1ccc(=O)[nH]c1", "CC"]
    vocab, x_atoms, x_bonds, (valences, orders) = aromatic_graphs(smiles)
    features = kekule_features(x_atoms, x_bonds, valences, orders, MATCHING_WEIGHTS)
    assert features.shape == (len(smiles), 9, KEKULE_FEATURES)
    assert features[..., 1:].sum() == 0  # nothing broken, no aromatic bond off a ring
    # In the rings, c and pyridine-type n need a double bond, [nH] and o do not.
    types, needs = x_atoms[:4].argmax(-1), features[:4, :, 0].bool()
    in_ring = x_bonds[:4, ..., 4].sum(-1) > 0
    for key, expected in [(("C", 0, 0), True), (("N", 0, 0), True), (("N", 0, 1), False), (("O", 0, 0), False)]:
        of_type = (types == vocab.index(key)) & in_ring
        assert of_type.any() and bool((needs[of_type] == expected).all()), key
    # The pyridone's c(=O) has its double bond already; atoms of no ring need none.
    carbonyl_carbon = int(((x_bonds[4, ..., 2].sum(-1) > 0) & (x_bonds[4, ..., 4].sum(-1) == 2)).nonzero()[0])
    assert features[4, carbonyl_carbon, 0] == 0
    assert features[4, :, 0].sum() == 4 and features[5, :, 0].sum() == 0


def test_kekule_features_flag_what_rdkit_cannot_kekulize():
    vocab, x_atoms, x_bonds, (valences, orders) = aromatic_graphs(["c1cc[nH]c1", "C=CC=C", "c1ccncc1"])
    # Pyrrole with its [nH] made a pyridine-type n: five atoms need a double bond, an odd count.
    pyrrole_nitrogen = int((x_atoms[0].argmax(-1) == vocab.index(("N", 0, 1))).nonzero()[0])
    x_atoms[0, pyrrole_nitrogen] = torch.nn.functional.one_hot(
        torch.tensor(vocab.index(("N", 0, 0))), vocab.num_atom_types).float()
    # Butadiene with every bond aromatic: an aromatic chain, on no ring.
    chain = x_bonds[1, :4, :4, 1:].sum(-1) > 0
    x_bonds[1, :4, :4] = torch.where(chain[..., None], torch.nn.functional.one_hot(torch.tensor(4), 5).float(),
                                     x_bonds[1, :4, :4])
    features = kekule_features(x_atoms, x_bonds, valences, orders, MATCHING_WEIGHTS)
    assert features[0, :5, 0].sum() == 5 and features[0, :5, 1].sum() == 5  # all five need one; broken
    assert features[0, pyrrole_nitrogen, 2] == 1  # moving the hydrogen back onto it fixes the ring
    assert features[0, :, 3].sum() == 0  # a ring
    assert features[1, :4, 3].sum() == 4 and features[1, :4, 1].sum() == 0  # off any ring, though matchable
    assert features[:2, 5:].sum() == 0  # padding
    assert features[2, :, 1:].sum() == 0  # pyridine itself is fine


def test_kekule_features_need_an_aromatic_bond_vocabulary(setup):
    vocab, _, _ = setup
    with pytest.raises(ValueError, match="aromatic"):
        DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences), kekule_features=True)

import copy
from dataclasses import replace

import pytest
import torch
from tiny_model import clean_inputs, noisy_inputs

from molgen.likelihood import log_density
from molgen.model import DensityConfig, DiScoConfig, DiScoFormer, denoise, upgrade_state_dict
from molgen.model.density import DENSITY_SCALE
from molgen.model.layers import PairLayout
from molgen.noise import tweedie_score
from molgen.tokenizer import pair_mask_of
from molgen.training.distill import with_atom_terms


def test_heads_have_the_right_shapes_are_finite_and_symmetric(tiny):
    vocab, batch, model = tiny
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


def test_log_density_skips_the_last_pair_update_without_changing_the_density(tiny):
    vocab, batch, model = tiny
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


def test_blocks_on_packed_pairs_equal_the_dense_pair_square(tiny):
    vocab, batch, model = tiny
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


def unbounded(model):
    """``model`` with its density head's sum in nats, before the bound to a log-probability."""
    copy_ = DiScoFormer(replace(model.config, density=replace(model.config.density, bounded=False)))
    copy_.load_state_dict(model.state_dict())
    return copy_.eval()


def test_density_atom_terms_start_at_zero_and_sum_over_real_atoms_only(tiny):
    vocab, batch, model = tiny
    inputs, _ = clean_inputs(batch, vocab)

    def density(of):
        return of(*inputs).density

    model = unbounded(model)
    upgraded = with_atom_terms(model).eval()
    assert upgraded.config.density.atom_terms and not model.config.density.atom_terms
    with torch.no_grad():
        torch.testing.assert_close(density(upgraded), density(model))  # zero-initialised: D unchanged
        upgraded.density.members[0].atoms[-1].bias.fill_(1.0)  # each real atom now adds one raw unit
        added = density(upgraded) - density(model)
    expected = batch.mask.sum(1).float() * DENSITY_SCALE
    torch.testing.assert_close(added, expected)
    assert len(set(batch.mask.sum(1).tolist())) > 1  # molecules of several sizes, so padding is exercised


def test_a_density_member_is_added_with_every_weight_kept_and_d_is_the_members_mean(tiny):
    vocab, batch, model = tiny
    inputs, _ = clean_inputs(batch, vocab)
    base = with_atom_terms(unbounded(model)).eval()
    grown = base.with_density_members(1).eval()
    assert grown.config.density.members == 2 and base.config.density.members == 1
    with torch.no_grad():
        output = grown(*inputs)
        first = grown.density(output.final_states, batch.mask, members=[0])
        second = grown.density(output.final_states, batch.mask, members=[1])
        torch.testing.assert_close(first, base(*inputs).density)  # the old head is member 0, unchanged
        torch.testing.assert_close(output.density, (first + second) / 2)
    assert not torch.allclose(first, second)  # the new member starts fresh, not as a copy
    own, old = {id(p) for p in grown.density.parameters_of([1])}, {id(p) for p in grown.density.parameters_of([0])}
    assert own and old and own.isdisjoint(old)
    assert {id(p) for p in grown.density.parameters_of()} == own | old
    bounded = DiScoFormer(replace(grown.config, density=replace(grown.config.density, bounded=True)))
    bounded.load_state_dict(grown.state_dict())
    with torch.no_grad():  # the bounded head: the same mean, then -softplus(-x), never above 0
        torch.testing.assert_close(bounded.eval()(*inputs).density, -torch.nn.functional.softplus(-output.density))


def test_kekule_features_need_an_aromatic_bond_vocabulary(tiny):
    vocab, _, _ = tiny
    with pytest.raises(ValueError, match="aromatic"):
        DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences), kekule_features=True)


def test_configs_of_earlier_checkpoints_load_and_retired_options_are_refused(tiny):
    _, _, model = tiny
    flat = {key: value for key, value in model.config.to_dict().items() if key not in ("density", "repair")}
    flat.update({"density_atom_terms": True, "density_members": 3, "ring_features": False, "fourier_features": 16,
                 "density_scale": 10.0})
    config = DiScoConfig.from_dict(flat)
    assert config.density == DensityConfig(atom_terms=True, members=3) and config.repair.width == 0
    assert DiScoConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="ring_features=True, which molgen retired"):
        DiScoConfig.from_dict({**flat, "ring_features": True})
    with pytest.raises(ValueError, match="density_scale=1.0, which molgen retired"):
        DiScoConfig.from_dict({**flat, "density_scale": 1.0})


def test_state_dict_keys_of_earlier_checkpoints_are_renamed_to_todays_modules():
    old = {"density_head.4.bias": 1, "density_atom_head.0.weight": 2, "density_extra_members.1.0.2.bias": 3,
           "density_extra_members.0.1.0.weight": 4, "density_offset": 5, "repair.0.weight": 6,
           "repair_pairs.2.bias": 7, "blocks.0.qkv.weight": 8}
    assert upgrade_state_dict(old) == {
        "density.members.0.cls.4.bias": 1, "density.members.0.atoms.0.weight": 2, "density.members.2.cls.2.bias": 3,
        "density.members.1.atoms.0.weight": 4, "density.offset": 5, "repair.atoms.0.weight": 6,
        "repair.pairs.2.bias": 7, "blocks.0.qkv.weight": 8}
    today = {"density.members.0.cls.4.bias": 1, "repair.atoms.0.weight": 6, "repair.pairs.2.bias": 7}
    assert upgrade_state_dict(today) == today  # already renamed: unchanged

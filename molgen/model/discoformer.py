"""The DiScoFormer: one graph-aware Transformer backbone, a score head and a density head
(docs/design.md, section 2).

Tokens are ``[DIST] [CLS] atom_1 .. atom_N``. Atom tokens embed their noisy atom-type channels; pair
features embed the noisy bond channels, bias every attention head (Graphormer) and are updated each
layer from the two token states (DiGress). The noise level enters through Fourier features of the
log-SNR and adaptive layer norm. With self-conditioning the previous estimate of the clean molecule
is fed back as extra channels, with per-atom features computed from it (``features``).

Heads:
  * score head: per-atom logits over atom types and per-pair logits over bond types (symmetric); their
    softmax is p(z_0 | z_t), whose mean gives the score by Tweedie's formula (``noise.tweedie_score``);
  * density head: D(z, t, dist) in nats from the final token states (``density``);
  * property head (optional, fit after training): RDKit properties of the clean molecule, a Gaussian
    per property, from the same states (``properties``); the sampler's guidance follows its gradient.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
from torch import nn

from molgen.model.adapters import DistributionAdapters
from molgen.model.config import DiScoConfig
from molgen.model.density import DensityHead, upgrade_density_keys
from molgen.model.features import derived_atom_features, kekule_features, valence_features
from molgen.model.layers import Block, FourierEmbedding, PairLayout
from molgen.model.properties import PropertyHead
from molgen.model.repair import RepairAdapter, upgrade_repair_keys
from molgen.tokenizer import pair_mask_of

FOURIER_FEATURES = 16


class ModelOutput(NamedTuple):
    atom_logits: torch.Tensor  # (B, N, A)
    bond_logits: torch.Tensor  # (B, N, N, bond types), symmetric
    density: torch.Tensor  # (B,) D(z, t, dist) in nats
    final_states: torch.Tensor  # (B, 2 + N, d) the final token states the density head reads


class DiScoFormer(nn.Module):
    def __init__(self, config: DiScoConfig):
        super().__init__()
        self.config = config
        d, dp = config.d_model, config.d_pair
        a, b = config.num_atom_types, config.num_bond_types
        extra_atom = (a + sum(width for _, width in derived_atom_features(config))) if config.self_conditioning else 0
        extra_bond = b if config.self_conditioning else 0
        self.register_buffer("valences", torch.tensor(config.atom_valences, dtype=torch.float32), persistent=False)
        self.register_buffer("bond_orders", torch.tensor(config.bond_orders, dtype=torch.float32), persistent=False)
        # Generic, fixed weights for the Tutte matrix of the Kekulé features.
        weights = torch.rand(config.max_atoms, config.max_atoms, generator=torch.Generator().manual_seed(0)) + 1.0
        self.register_buffer("matching_weights", weights.double(), persistent=False)
        self.atom_in = nn.Linear(a + extra_atom, d)
        if config.repair.width:
            # The pair side reads each atom's estimate, valence and Kekulé features (the gate needs them).
            flags = a + sum(width for name, width in derived_atom_features(config) if name in ("valence", "kekule"))
            self.repair = RepairAdapter(config.repair, a + extra_atom, b + extra_bond + 2 * flags, d, dp)
        self.bond_in = nn.Linear(b + extra_bond, dp)
        self.position = nn.Parameter(torch.zeros(config.max_atoms, d))
        nn.init.normal_(self.position, std=0.02)
        self.dist = nn.Embedding(config.num_distributions + 1, d)
        self.cls = nn.Parameter(torch.zeros(d))
        self.time = FourierEmbedding(FOURIER_FEATURES, d)
        self.blocks = nn.ModuleList(Block(d, dp, config.n_heads, config.d_ff) for _ in range(config.n_layers))
        self.adapters = DistributionAdapters(self.blocks, config.adapter, d, config.max_atoms) if config.adapter.rank else None
        self.final_norm = nn.LayerNorm(d)
        self.atom_head = nn.Linear(d, a)
        self.bond_left = nn.Linear(d, dp)
        self.bond_right = nn.Linear(d, dp)
        self.bond_head = nn.Sequential(nn.LayerNorm(dp), nn.Linear(dp, dp), nn.GELU(), nn.Linear(dp, b))
        self.density = DensityHead(d, config.density)
        self.properties = PropertyHead(d, config.properties) if config.properties.names else None

    @property
    def null_distribution(self) -> int:
        return self.config.num_distributions

    def forward(
        self,
        z_atoms: torch.Tensor,
        z_bonds: torch.Tensor,
        mask: torch.Tensor,
        logsnr_atoms: torch.Tensor,
        logsnr_bonds: torch.Tensor,
        dist: torch.Tensor,
        self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> ModelOutput:
        """z_atoms (B, N, A), z_bonds (B, N, N, bond types), mask (B, N), log-SNRs (B,), dist (B,) long.

        ``self_cond`` is the previous estimate (atom probabilities, bond probabilities) of the clean
        molecule, or None (zeros) when there is none yet.
        """
        h, pairs = self.token_states(z_atoms, z_bonds, mask, logsnr_atoms, logsnr_bonds, dist, self_cond)
        atom_states = h[:, 2:]
        atom_logits = self.atom_head(atom_states)
        outer = self.bond_left(atom_states)[:, :, None] * self.bond_right(atom_states)[:, None, :]
        bond_logits = self.bond_head(pairs + outer)
        bond_logits = 0.5 * (bond_logits + bond_logits.transpose(1, 2))
        return ModelOutput(atom_logits, bond_logits, self.density_of(h, mask, dist), h)

    def density_of(self, final_states: torch.Tensor, mask: torch.Tensor, dist: torch.Tensor,
                   bound: bool = True) -> torch.Tensor:
        """D (B,) from final token states: the shared head, plus an adapted distribution's own term, plus
        the near-miss term where the model has one (``bound=False``: the head's ELBO fit alone, before its
        bound, as the fits use it)."""
        extra = self.adapters.density_term(final_states, mask, dist) if self.adapters is not None else None
        value = self.density(final_states, mask, extra=extra, bound=bound)
        if bound and self.density.near_miss is not None:
            # Fit on the base's distributions and the null id: an adapted distribution's molecules are
            # not what it learned to call real, so they keep the head's value alone.
            term = self.density.near_miss_term(final_states, mask)
            if self.adapters is not None:
                term = torch.where(dist == self.adapters.distribution, 0.0, term)
            value = value + term
        return value

    def token_states(
        self,
        z_atoms: torch.Tensor,
        z_bonds: torch.Tensor,
        mask: torch.Tensor,
        logsnr_atoms: torch.Tensor,
        logsnr_bonds: torch.Tensor,
        dist: torch.Tensor,
        self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
        final_pairs: bool = True,
        repair: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The backbone: final token states (B, 2 + N, d), normalised, and pair features (B, N, N, dp)
        for the inputs of :meth:`forward`. Only the bond head reads the last block's pair update:
        ``final_pairs=False`` skips it and returns no pairs, so that scoring, which needs the token
        states alone, does not pay for it. ``repair=False`` keeps the repair adapter out: the density
        head reads real molecules, never a sampler's estimate, and a few odd ones that RDKit accepts
        (an aromatic ring with a triple bond) would otherwise open its gate."""
        batch, n, _ = z_atoms.shape
        pair_mask = pair_mask_of(mask)[..., None].to(z_atoms.dtype)
        atom_mask = mask[..., None].to(z_atoms.dtype)
        atom_inputs, bond_inputs = [z_atoms], [z_bonds]
        if self.config.self_conditioning:
            if self_cond is None:
                prev_atoms, prev_bonds = torch.zeros_like(z_atoms), torch.zeros_like(z_bonds)
            else:
                prev_atoms, prev_bonds = self_cond[0] * atom_mask, self_cond[1] * pair_mask
            valence = valence_features(prev_atoms, prev_bonds, self.valences, self.bond_orders)
            atom_inputs += [prev_atoms, valence]
            if self.config.kekule_features:
                kekule = kekule_features(prev_atoms, prev_bonds, self.valences, self.bond_orders, self.matching_weights)
                atom_inputs.append(kekule)
            bond_inputs.append(prev_bonds)
        atom_inputs = torch.cat(atom_inputs, dim=-1)
        atoms = self.atom_in(atom_inputs) + self.position[:n]
        layout = PairLayout(mask, z_atoms.dtype)
        packed_bond_inputs = layout.pack(torch.cat(bond_inputs, dim=-1))
        pairs = self.bond_in(packed_bond_inputs)
        if self.config.repair.width and repair and self_cond is not None:
            atoms, pairs = self.repair(atoms, pairs, atom_inputs, packed_bond_inputs, (prev_atoms, prev_bonds), valence,
                                       kekule, logsnr_atoms, layout, self.valences, self.bond_orders)
        pairs = pairs * layout.mask

        time = self.time(logsnr_atoms, logsnr_bonds)
        special = torch.stack([self.dist(dist), self.cls.expand(batch, -1)], dim=1)
        h = torch.cat([special, atoms], dim=1) + time[:, None, :]
        key_mask = torch.cat([torch.ones(batch, 2, dtype=torch.bool, device=mask.device), mask], dim=1)
        if self.adapters is not None:
            self.adapters.select(dist)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            h, pairs = block(h, pairs, key_mask, layout, time, update_pairs=final_pairs or index < last)
        return self.final_norm(h), layout.unpack(pairs) if final_pairs else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def with_new_module(self, names: str | tuple[str, ...], **changes) -> "DiScoFormer":
        """This model rebuilt under config ``changes`` that add the modules ``names``, which start as
        the constructor makes them (a zero last layer: computing what this model did); every other
        weight carried over. A ``names`` module this model has already is dropped, not carried."""
        prefixes = tuple(name + "." for name in ((names,) if isinstance(names, str) else names))
        upgraded = DiScoFormer(replace(self.config, **changes))
        weights = {key: value for key, value in self.state_dict().items() if not key.startswith(prefixes)}
        missing, unexpected = upgraded.load_state_dict(weights, strict=False)
        assert not unexpected and all(key.startswith(prefixes) for key in missing), (missing, unexpected)
        return upgraded

    def with_density_members(self, count: int = 1) -> "DiScoFormer":
        """This model with ``count`` more density members, fresh as the constructor makes them, every weight
        carried over. D changes: the new members count once they are fit (``molgen distill --add-members``)."""
        members = self.config.density.members
        return self.with_new_module(tuple(f"density.members.{index}" for index in range(members, members + count)),
                                    density=replace(self.config.density, members=members + count))


def upgrade_state_dict(state: dict) -> dict:
    """A state dict of any molgen version in today's keys (a no-op on today's)."""
    return upgrade_repair_keys(upgrade_density_keys(state))


def posterior_probs(output: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p(z_0 | z_t) as probabilities, zero outside real atoms and pairs: the model's x0 estimate."""
    atom_probs = output.atom_logits.softmax(-1) * mask[..., None]
    bond_probs = output.bond_logits.softmax(-1) * pair_mask_of(mask)[..., None]
    return atom_probs, bond_probs

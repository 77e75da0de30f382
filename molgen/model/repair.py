"""The repair adapter: a small correction that acts only while the sampler's estimate is no molecule.

An MLP over each atom's inputs is added to its embedding (and, with a pair side, one over each
pair's inputs to its features) only where the previous estimate's argmax graph is no molecule (an
atom over its valence, two fragments, aromatic bonds without a Kekulé structure) and the atoms'
log-SNR is at least ``min_logsnr``. Real molecules never open the gate, so their scores and
``log_density`` are untouched. It is fitted after training, everything else frozen
(``molgen.training.repair``).
"""

from __future__ import annotations

import torch
from torch import nn

from molgen.model.config import RepairAdapterConfig
from molgen.model.graphs import reachable
from molgen.model.layers import PairLayout


def repair_gate(
    atom_probs: torch.Tensor, bond_probs: torch.Tensor, kekule: torch.Tensor, valences: torch.Tensor,
    bond_orders: torch.Tensor,
) -> torch.Tensor:
    """(B,) float: 1 where the estimate's argmax graph is no molecule, 0 where it could be one. No
    molecule: an atom over its valence, more than one fragment, or aromatic bonds without a Kekulé
    structure or off every cycle (from its Kekulé features (B, N, 4))."""
    present = atom_probs.sum(-1) > 0
    bonds = torch.where(bond_probs.sum(-1) > 0, bond_probs.argmax(-1), 0)
    orders = bond_orders[bonds]
    aromatic = orders != orders.round()
    # Aromatic bonds count 1 here and the Kekulé features judge their double bonds.
    used = torch.where(aromatic, 1.0, orders).sum(-1)
    over = present & (used > valences[atom_probs.argmax(-1)] + 1e-6)
    reach = reachable(bonds > 0)
    first = present.float().argmax(1)
    apart = present & ~reach[torch.arange(len(first), device=first.device), first]
    broken = (kekule[..., 1] + kekule[..., 3]) > 0
    return (over | apart | broken).any(1).float()


def _zero_last(mlp: nn.Sequential) -> nn.Sequential:
    """Zero at first: adding the adapter to a trained model leaves it computing what it did."""
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


class RepairAdapter(nn.Module):
    def __init__(self, config: RepairAdapterConfig, atom_inputs: int, pair_inputs: int, d: int, d_pair: int):
        """``atom_inputs``: the width of an atom's inputs; ``pair_inputs``: of a pair's inputs plus
        the sum and product of its two atoms' estimate, valence and Kekulé features."""
        super().__init__()
        self.min_logsnr = config.min_logsnr
        self.atoms = _zero_last(nn.Sequential(nn.Linear(atom_inputs, config.width), nn.SiLU(), nn.Linear(config.width, d)))
        self.pairs = _zero_last(nn.Sequential(
            nn.Linear(pair_inputs, config.pair_width), nn.SiLU(), nn.Linear(config.pair_width, d_pair),
        )) if config.pair_width else None

    def forward(
        self, atoms: torch.Tensor, pairs: torch.Tensor, atom_inputs: torch.Tensor, pair_inputs: torch.Tensor,
        estimate: tuple[torch.Tensor, torch.Tensor], valence: torch.Tensor, kekule: torch.Tensor,
        logsnr_atoms: torch.Tensor, layout: PairLayout, valences: torch.Tensor, bond_orders: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Atom embeddings (B, N, d) and packed pair features (B, P, dp), corrected where the gate opens."""
        # The window first: at noisier levels (the first part of every chain) the gate stays shut and
        # its graph checks are not worth computing.
        in_window = logsnr_atoms >= self.min_logsnr
        if not in_window.any():
            return atoms, pairs
        gate = repair_gate(*estimate, kekule, valences, bond_orders) * in_window
        if not gate.any():
            return atoms, pairs
        atoms = atoms + gate[:, None, None] * self.atoms(atom_inputs)
        if self.pairs is not None:
            flags = torch.cat([estimate[0], valence, kekule], dim=-1)
            left, right = flags[:, layout.upper[0]], flags[:, layout.upper[1]]
            # Sum and product: the same for either order of the pair's two atoms.
            inputs = torch.cat([pair_inputs, left + right, left * right], dim=-1)
            pairs = pairs + gate[:, None, None] * self.pairs(inputs)
        return atoms, pairs


def upgrade_repair_keys(state: dict) -> dict:
    """``repair.*`` -> ``repair.atoms.*`` and ``repair_pairs.*`` -> ``repair.pairs.*``, for checkpoints
    written before the adapter was one module."""
    upgraded = {}
    for key, value in state.items():
        if key.startswith("repair.") and not key.startswith(("repair.atoms.", "repair.pairs.")):
            key = "repair.atoms." + key[len("repair."):]
        elif key.startswith("repair_pairs."):
            key = "repair.pairs." + key[len("repair_pairs."):]
        upgraded[key] = value
    return upgraded

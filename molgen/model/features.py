"""Per-atom input features computed from the self-conditioning estimate of the clean molecule.

What a few attention layers read poorly from probabilities, computed exactly instead: how much of
each atom's valence the estimate uses, and (for models with aromatic bonds) whether its aromatic
bonds have a Kekulé structure, the largest class of raw decoding failures.
"""

from __future__ import annotations

import torch

from molgen.model.graphs import aromatic_system, has_perfect_matching, matching_with_each_need_flipped, on_aromatic_cycle

KEKULE_FEATURES = 4


def derived_atom_features(config) -> list[tuple[str, int]]:
    """Per-atom inputs a model of ``config`` (a DiScoConfig) computes from its self-conditioning
    estimate, after its atom channels, in order: (name, width) of the valence features, then the
    Kekulé features when on."""
    return [("valence", 2)] + [("kekule", KEKULE_FEATURES)] * config.kekule_features


def valence_features(
    atom_probs: torch.Tensor, bond_probs: torch.Tensor, valences: torch.Tensor, bond_orders: torch.Tensor
) -> torch.Tensor:
    """Expected valence and expected free valence (allowed minus used) per atom, scaled to ~[-1, 1]."""
    used = (bond_probs * bond_orders.to(bond_probs.dtype)).sum(dim=(-1, -2))  # (B, N)
    allowed = atom_probs @ valences.to(atom_probs.dtype)
    return torch.stack([used / 4.0, (allowed - used) / 4.0], dim=-1)


def kekule_features(
    atom_probs: torch.Tensor, bond_probs: torch.Tensor, valences: torch.Tensor, bond_orders: torch.Tensor,
    matching_weights: torch.Tensor,
) -> torch.Tensor:
    """Per-atom Kekulé features of the estimate's argmax graph (B, N, 4), all 0 or 1:

    * the atom has aromatic bonds and needs one of them to be double (its valence, with every
      aromatic bond single, leaves room for one more: c, pyridine-type n, but not [nH] or o);
    * its molecule's aromatic bonds have no Kekulé structure (no perfect matching of the atoms
      that need a double bond over the aromatic bonds), the failure RDKit reports as kekulization;
    * in such a molecule, toggling whether this atom needs a double bond (n <-> [nH]) would fix it;
    * it has an aromatic bond that lies on no cycle of aromatic bonds (RDKit rejects those too).

    Kekulizability is a global, parity-like property of a ring system, the largest class of raw
    decoding failures (about 8% of samples), half of them fixable by one hydrogen moved between ring
    nitrogens; a few attention layers read such a property poorly.
    """
    aromatic, in_system, needs_double = aromatic_system(atom_probs, bond_probs, valences, bond_orders)
    broken = in_system & ~has_perfect_matching(aromatic, needs_double, matching_weights)[:, None]
    # The per-atom checks below cost N determinants or N reachability closures per molecule: they
    # run only on the molecules they can flag (the broken ones; those with aromatic bonds).
    toggle_fixes, off_cycle = torch.zeros_like(broken), torch.zeros_like(in_system)
    rows = broken.any(1).nonzero().squeeze(1)
    toggle_fixes[rows] = matching_with_each_need_flipped(aromatic[rows], needs_double[rows], matching_weights)
    rows = in_system.any(1).nonzero().squeeze(1)
    off_cycle[rows] = in_system[rows] & ~on_aromatic_cycle(aromatic[rows])
    return torch.stack([needs_double, broken, broken & toggle_fixes, off_cycle], dim=-1).float()

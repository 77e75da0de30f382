"""Corrupted copies of training molecules: a ring atom swapped so that the aromatic bonds have no
Kekulé structure, or one bond changed so that an atom exceeds its valence or the graph falls apart.

The repair adapter (``molgen.training.repair``) learns on noisy states drawn around such copies, and
training (``LossWeights.bond_repair_share``) may too, the real molecule staying the target: the
sampler then learns to move such states back to molecules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from molgen.likelihood import upper_pair_mask
from molgen.model import DiScoFormer
from molgen.model.graphs import AROMATIC_ORDER, aromatic_system, matching_with_each_need_flipped, reachable
from molgen.tokenizer import GraphBatch, pair_mask_of


@torch.no_grad()
def ring_atom_swapped(
    model: DiScoFormer, batch: GraphBatch, swaps: torch.Tensor, share: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Atom types (B, N) with, in about ``share`` of the molecules that allow it, one atom on an
    aromatic bond replaced by a type that ``swaps`` (A, A) bool allows for it, chosen so that every
    atom stays within its valence but the aromatic bonds have no Kekulé structure; and which
    molecules were changed (B,) bool.

    Sampling chains reach such states and keep them: about 7% of raw samples cannot be kekulized,
    most of them for one misplaced ring hydrogen, some for a ring atom of the wrong element (c for
    o, n for c). Noised real molecules never show the model a broken ring at low noise, so it
    learned to denoise towards whatever graph the state is near. Drawn around the broken copy with
    the real molecule as the target, these states teach the model to mend the ring; the Kekulé
    features, which flag exactly such atoms, then have something to say.

    A swap breaks the ring exactly when it flips whether the atom needs a double bond and the flip
    leaves the aromatic bonds without a perfect matching, whatever the new type: one matching test
    per atom and molecule decides for all types.
    """
    atoms, bonds = batch.atoms, batch.bonds
    size = atoms.shape[0]
    changed = torch.zeros(size, dtype=torch.bool, device=atoms.device)
    if AROMATIC_ORDER not in model.config.bond_orders:
        return atoms, changed
    x_atoms, x_bonds = batch.one_hot(model.config.num_atom_types, model.config.num_bond_types)
    aromatic, in_system, needs_double = aromatic_system(x_atoms, x_bonds, model.valences, model.bond_orders)
    # Bond orders each atom uses with its aromatic bonds single: a new type's valence must cover them.
    used = torch.where(aromatic, 1.0, model.bond_orders[bonds]).sum(-1)  # (B, N); padding pairs are order 0
    free = model.valences[None, None, :] - used[..., None]  # (B, N, A): free valence as each type
    flips_need = (free >= 1) != needs_double[..., None]
    allowed = swaps.to(atoms.device)[atoms] & in_system[..., None] & (free >= 0) & flips_need
    draw = torch.rand(size, generator=generator, device=atoms.device)
    rows = (allowed.flatten(1).any(1) & (draw < share)).nonzero().squeeze(1)
    breaks = ~matching_with_each_need_flipped(aromatic[rows], needs_double[rows], model.matching_weights)
    options = allowed[rows] & breaks[..., None]  # (R, N, A)
    # One option per molecule, uniformly: the largest of random keys over the options.
    keys = torch.rand(options.shape, generator=generator, device=atoms.device).masked_fill(~options, -1.0)
    pick = keys.flatten(1).argmax(1)
    found = options.flatten(1).any(1)
    rows, pick = rows[found], pick[found]
    swapped = atoms.clone()
    swapped[rows, pick // swaps.shape[1]] = pick % swaps.shape[1]
    changed[rows] = True
    return swapped, changed


@torch.no_grad()
def bond_corrupted(
    model: DiScoFormer, batch: GraphBatch, share: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bond types (B, N, N) with, in about ``share`` of the molecules, one bond changed so that the
    graph is no molecule: either a bond added or raised one order (none to single, single to double,
    double to triple) past an atom's valence, or a bridge removed so that the graph falls apart, the
    two kinds equally often where a molecule allows both; and which molecules were changed (B,) bool.

    Those are the raw samples' other failures. Of 1,000 samples of the run-7 model, 28 exceeded a
    valence (19 mended by removing one single bond, 14 by lowering a double bond; some either way)
    and 32 were disconnected, 31 of them mended by one added bond, mostly between two fragments of
    several atoms (4 + 5, 3 + 6). As in :func:`ring_atom_swapped`, the copy is never a real molecule,
    so asking for the real one from near it is never ambiguous.
    """
    atoms, bonds, mask = batch.atoms, batch.bonds, batch.mask
    size, n = atoms.shape
    device = atoms.device
    pairs = upper_pair_mask(mask)
    orders = model.bond_orders[bonds]  # (B, N, N) bond orders, aromatic 1.5
    present = (bonds > 0) & pair_mask_of(mask)
    bond_sum = (orders * present).sum(-1)
    # One more bond order would exceed the valence. Not counted on atoms with an aromatic bond, whose
    # 1.5 orders RDKit does not add up: 6 of 4,000 QM9 copies with a bond across a ring stayed valid.
    on_aromatic = (present & (orders != orders.round())).any(-1)
    over = (bond_sum + 1 > model.valences[atoms] + 1e-6) & ~on_aromatic
    raisable = (bonds <= 2) & (model.bond_orders[(bonds + 1).clamp(max=len(model.config.bond_orders) - 1)] == orders + 1)
    valence_pairs = pairs & raisable & (over[:, :, None] | over[:, None, :])
    bridge_pairs = pairs & present & ~_connected_without(present)

    # One kind per molecule (a fair coin where both are possible), then one pair of it uniformly.
    has_valence, has_bridge = valence_pairs.flatten(1).any(1), bridge_pairs.flatten(1).any(1)
    coin = torch.rand(size, generator=generator, device=device) < 0.5
    use_bridge = has_bridge & (~has_valence | coin)
    candidates = torch.where(use_bridge[:, None, None], bridge_pairs, valence_pairs)
    draw = torch.rand(size, generator=generator, device=device)
    changed = candidates.flatten(1).any(1) & (draw < share)
    keys = torch.rand(candidates.shape, generator=generator, device=device).masked_fill(~candidates, -1.0)
    chosen = F.one_hot(keys.flatten(1).argmax(1), n * n).view(size, n, n).bool() & changed[:, None, None]
    chosen = chosen | chosen.transpose(1, 2)
    new_bonds = torch.where(use_bridge[:, None, None], torch.zeros_like(bonds), bonds + 1)
    return torch.where(chosen, new_bonds, bonds), changed


def _connected_without(present: torch.Tensor) -> torch.Tensor:
    """(B, N, N) bool, upper triangle: for each bond (i < j) of ``present`` (B, N, N symmetric),
    whether i and j are still connected once that bond is removed, i.e. whether it is not a bridge."""
    edges = torch.triu(present, diagonal=1).nonzero()  # (E, 3): molecule, i, j
    adjacency = present[edges[:, 0]].clone()  # one graph per bond, with that bond removed
    rows = torch.arange(len(edges), device=present.device)
    adjacency[rows, edges[:, 1], edges[:, 2]] = False
    adjacency[rows, edges[:, 2], edges[:, 1]] = False
    connected = torch.zeros_like(present)
    connected[edges[:, 0], edges[:, 1], edges[:, 2]] = reachable(adjacency)[rows, edges[:, 1], edges[:, 2]]
    return connected

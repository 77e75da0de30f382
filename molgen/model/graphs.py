"""Graph algorithms on batched, dense boolean adjacency: matchings, reachability, aromatic systems.

Torch, not RDKit: they run on the sampler's estimates inside the model's forward pass (the Kekulé
features, the repair gate) and on training batches (corruptions), on whatever device the model is.
"""

from __future__ import annotations

import torch

from molgen.tokenizer import BOND_ORDERS

AROMATIC_ORDER = BOND_ORDERS["aromatic"]


def has_perfect_matching(edges: torch.Tensor, nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Whether the graphs ``edges`` (M, N, N) bool, restricted to ``nodes`` (M, N) bool, have a perfect
    matching: the Tutte matrix with generic weights (N, N) is non-singular exactly then (with
    probability 1 over the weights; Lovász 1979). Graphs with no nodes have one. Returns (M,) bool.
    Graphs padded to fewer atoms than ``weights`` has rows use its leading block."""
    n = edges.shape[-1]
    edges = edges & nodes[:, :, None] & nodes[:, None, :]
    upper = torch.triu(weights[:n, :n], diagonal=1)
    tutte = edges.double() * (upper - upper.T) + torch.diag_embed((~nodes).double())
    return torch.linalg.det(tutte).abs() > 1e-9


def matching_with_each_need_flipped(
    aromatic: torch.Tensor, needs_double: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """(M, N) bool: for each atom, whether the aromatic bonds (M, N, N) hold a perfect matching of the
    atoms that need a double bond (M, N) once that atom's need is flipped (n <-> [nH], c <-> o, ...).
    Costs N determinants per molecule."""
    n = aromatic.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=aromatic.device)
    return has_perfect_matching(
        aromatic[:, None].expand(-1, n, n, n).reshape(-1, n, n), (needs_double[:, None, :] ^ eye).reshape(-1, n), weights,
    ).view(-1, n)


def aromatic_system(
    atom_probs: torch.Tensor, bond_probs: torch.Tensor, valences: torch.Tensor, bond_orders: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of the argmax graph: its aromatic bonds (B, N, N), the atoms on one (B, N), and those of them
    that need one of their aromatic bonds to be double (B, N), all bool. The aromatic bonds have a
    Kekulé structure exactly when they hold a perfect matching of the atoms that need one."""
    present = atom_probs.sum(-1) > 0
    bonds = torch.where(bond_probs.sum(-1) > 0, bond_probs.argmax(-1), 0)
    aromatic = bonds == int((bond_orders == AROMATIC_ORDER).nonzero()[0])
    aromatic_degree = aromatic.sum(-1)
    other_orders = torch.where(aromatic, 0.0, bond_orders[bonds]).sum(-1)
    free = valences[atom_probs.argmax(-1)] - other_orders - aromatic_degree
    in_system = present & (aromatic_degree > 0)
    return aromatic, in_system, in_system & (free >= 1)


def on_aromatic_cycle(aromatic: torch.Tensor) -> torch.Tensor:
    """Whether each atom lies on a cycle of aromatic bonds (M, N) given those bonds (M, N, N) bool:
    two of its aromatic neighbours are joined without it."""
    n = aromatic.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=aromatic.device)
    without = aromatic[:, None] & ~eye[None, :, :, None] & ~eye[None, :, None, :]  # (M, removed atom, N, N)
    reach = reachable(without).float()
    neighbours = aromatic.float()
    joined = torch.einsum("bij,bijk,bik->bi", neighbours, reach, neighbours) - aromatic.sum(-1)  # minus j = k
    return joined > 0.5


def reachable(adjacency: torch.Tensor) -> torch.Tensor:
    """(..., N, N) bool: whether j can be reached from i along the bonds of ``adjacency`` (..., N, N)
    bool; every atom reaches itself. Repeated squaring: k squarings cover paths of up to 2^k bonds."""
    n = adjacency.shape[-1]
    reach = (adjacency | torch.eye(n, dtype=torch.bool, device=adjacency.device)).float()
    for _ in range(max(1, n - 2).bit_length()):  # 2^k >= n - 1, the longest simple path
        reach = (reach @ reach).clamp(max=1.0)
    return reach > 0.5

"""The DiScoFormer: one graph-aware Transformer backbone, a score head and a density head.

Tokens are ``[DIST] [CLS] atom_1 .. atom_N``. Atom tokens embed their noisy atom-type channels; pair
features embed the noisy bond channels, bias every attention head (Graphormer) and are updated each
layer from the two token states (DiGress). The noise level enters through Fourier features of the
log-SNR and adaptive layer norm. With self-conditioning the previous estimate of the clean molecule
is fed back as extra channels, together with per-atom valence features computed from it (and,
optionally, ring features and Kekulé features of its aromatic bonds).

Heads:
  * score head: per-atom logits over atom types and per-pair logits over bond types (symmetric); their
    softmax is p(z_0 | z_t), whose mean gives the score by Tweedie's formula (``noise.tweedie_score``);
  * density head: an MLP on the final ``[CLS]`` state, a scalar D(z, t, dist) in nats; optionally
    (``density_atom_terms``) plus a per-atom term summed over the atoms. The ELBO it learns is a sum
    over atoms and pairs, and a sum read-out fits it better than one [CLS] vector: refit on the same
    20,000 QM9 targets, Spearman with the ELBO 0.655 -> 0.708 and AUROC against single-edit
    mutants 0.752 -> 0.826. D may average several such heads (``density_members``), distilled on
    their own ELBO targets or from their own starting weights: their errors partly cancel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from molgen.noise import NoiseProcess
from molgen.tokenizer import BOND_ORDERS, pair_mask_of

AROMATIC_ORDER = BOND_ORDERS["aromatic"]


@dataclass
class DiScoConfig:
    num_atom_types: int
    max_atoms: int
    atom_valences: tuple[int, ...]  # allowed valence per atom type, for the valence features
    bond_orders: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)  # per bond type, for the valence features
    num_distributions: int = 1  # learned [DIST] embeddings; index num_distributions is the null one
    d_model: int = 128
    d_pair: int = 32
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 256
    fourier_features: int = 16
    self_conditioning: bool = True
    ring_features: bool = False  # closed-walk counts of the previous estimate's graph, per atom
    kekule_features: bool = False  # whether the previous estimate's aromatic bonds can be kekulized, per atom
    density_scale: float = 10.0  # the density head's raw output times this is nats
    density_atom_terms: bool = False  # D also sums a per-atom term over the final atom states
    # D is the mean of this many heads (each [CLS] plus atom terms). Members past the first are fit
    # by distillation on fresh ELBO targets, each from its own start, so their errors partly cancel
    # (molgen distill --add-members).
    density_members: int = 1
    # Hidden width of the repair adapter (0: none): an MLP over each atom's inputs added to its
    # embedding only where the previous estimate's graph is no molecule (see repair_gate) and the
    # atoms' log-SNR is at least repair_min_logsnr (noisier estimates are never molecules).
    repair_adapter: int = 0
    repair_min_logsnr: float = -1.5
    # Hidden width of its pair side (0: none): an MLP over each pair's inputs and its two atoms'
    # estimate and flags, added to the pair's features under the same gate. Valence, fragment and
    # a third of the ring failures need a bond changed, which the atom side reaches only through
    # attention.
    repair_pair_adapter: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["atom_valences"] = list(self.atom_valences)
        data["bond_orders"] = list(self.bond_orders)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "DiScoConfig":
        data = dict(data)
        data["atom_valences"] = tuple(data["atom_valences"])
        # Configs written before aromatic bonds name a count of Kekulé bond types instead.
        data.pop("num_bond_types", None)
        data["bond_orders"] = tuple(float(order) for order in data.get("bond_orders", cls.bond_orders))
        return cls(**data)

    def __post_init__(self):
        if self.kekule_features and AROMATIC_ORDER not in self.bond_orders:
            raise ValueError("Kekulé features read aromatic bonds: this vocabulary has none (--aromatic-bonds)")

    @property
    def num_bond_types(self) -> int:
        return len(self.bond_orders)


class ModelOutput(NamedTuple):
    atom_logits: torch.Tensor  # (B, N, A)
    bond_logits: torch.Tensor  # (B, N, N, bond types), symmetric
    density: torch.Tensor  # (B,) D(z, t, dist) in nats
    final_states: torch.Tensor  # (B, 2 + N, d) the final token states the density head reads


def valence_features(
    atom_probs: torch.Tensor, bond_probs: torch.Tensor, valences: torch.Tensor, bond_orders: torch.Tensor
) -> torch.Tensor:
    """Expected valence and expected free valence (allowed minus used) per atom, scaled to ~[-1, 1]."""
    used = (bond_probs * bond_orders.to(bond_probs.dtype)).sum(dim=(-1, -2))  # (B, N)
    allowed = atom_probs @ valences.to(atom_probs.dtype)
    return torch.stack([used / 4.0, (allowed - used) / 4.0], dim=-1)


RING_WALK_LENGTHS = (3, 4, 5, 6)
KEKULE_FEATURES = 4


def derived_atom_features(config: DiScoConfig) -> list[tuple[str, int]]:
    """Per-atom inputs computed from the self-conditioning estimate, after its atom channels, in
    order: (name, width) of the valence features, then the ring and Kekulé features when on."""
    return [("valence", 2)] + [("ring", len(RING_WALK_LENGTHS))] * config.ring_features + [
        ("kekule", KEKULE_FEATURES)
    ] * config.kekule_features


def ring_features(bond_probs: torch.Tensor) -> torch.Tensor:
    """log(1 + closed walks of length 3..6 from each atom) on the expected adjacency (B, N, 4 lengths).

    Rings (and whether an atom closes one) are what the per-pair channels see worst: a ring is a
    global property, and a Transformer reads it only after several layers of pair updates. Closed
    walks of length k count k-rings through the atom (plus walks that backtrack, which the degree
    from the valence features accounts for), as in DiGress's cycle features.
    """
    adjacency = 1.0 - bond_probs[..., 0]
    adjacency = adjacency * (bond_probs.sum(-1) > 0)  # the 'none' channel is 0 outside real pairs too
    adjacency = adjacency - torch.diag_embed(torch.diagonal(adjacency, dim1=1, dim2=2))
    walks, power, features = adjacency, adjacency, []
    for length in range(2, max(RING_WALK_LENGTHS) + 1):
        power = power @ walks
        if length in RING_WALK_LENGTHS:
            features.append(torch.diagonal(power, dim1=1, dim2=2))
    return torch.log1p(torch.stack(features, dim=-1).clamp(min=0.0))


def has_perfect_matching(edges: torch.Tensor, nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Whether the graphs ``edges`` (M, N, N) bool, restricted to ``nodes`` (M, N) bool, have a perfect
    matching: the Tutte matrix with generic weights (N, N) is non-singular exactly then (with
    probability 1 over the weights; Lovász 1979). Graphs with no nodes have one. Returns (M,) bool."""
    edges = edges & nodes[:, :, None] & nodes[:, None, :]
    upper = torch.triu(weights, diagonal=1)
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


class FourierEmbedding(nn.Module):
    def __init__(self, features: int, out: int):
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(features) * math.pi / 20.0, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * features, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, logsnr_atoms: torch.Tensor, logsnr_bonds: torch.Tensor) -> torch.Tensor:
        angles = torch.cat([logsnr_atoms[:, None], logsnr_bonds[:, None]], dim=1)[:, :, None] * self.frequencies
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1))


class Block(nn.Module):
    """Pre-norm Transformer block with pair-biased attention, adaLN, and a pair-feature update."""

    def __init__(self, config: DiScoConfig):
        super().__init__()
        d, heads = config.d_model, config.n_heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.modulation = nn.Linear(d, 4 * d)  # shift/scale for both norms, from the noise embedding
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.pair_bias = nn.Linear(config.d_pair, heads)
        self.pair_to_atom = nn.Linear(config.d_pair, d)
        self.ff = nn.Sequential(nn.Linear(d, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, d))
        self.pair_norm = nn.LayerNorm(config.d_pair)
        self.pair_left = nn.Linear(d, config.d_pair)
        self.pair_right = nn.Linear(d, config.d_pair)
        self.pair_ff = nn.Sequential(
            nn.Linear(config.d_pair, 2 * config.d_pair), nn.GELU(), nn.Linear(2 * config.d_pair, config.d_pair)
        )

    def forward(self, h, pairs, key_mask, layout: "PairLayout", time, update_pairs: bool = True):
        """h (B, T, d) with T = 2 + N; pairs (B, P, dp), one row per atom pair i < j (see
        :class:`PairLayout`); key_mask (B, T). Without ``update_pairs`` the pairs come back as they
        came in."""
        batch, tokens, d = h.shape
        shift1, scale1, shift2, scale2 = self.modulation(time)[:, None, :].chunk(4, dim=-1)

        x = self.norm1(h) * (1 + scale1) + shift1
        head = d // self.heads
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, head).permute(2, 0, 3, 1, 4).reshape(3, -1, tokens, head)
        # Pairs that are not stored (the diagonal, padding) have zero features: their bias is the
        # layer's constant term, as it would be for a zero row.
        pair_bias = torch.cat([self.pair_bias(pairs), self.pair_bias.bias.expand(batch, 1, -1)], dim=1)
        bias = F.pad(pair_bias.transpose(1, 2)[:, :, layout.square], (2, 0, 2, 0))  # (B, heads, T, T)
        bias = bias.masked_fill_(~key_mask[:, None, None, :], float("-inf")).view(-1, tokens, tokens)
        # Plain batched products: at 11 tokens they beat the fused attention kernel (31 against 37 ms
        # a block on 2,048 molecules), and they have a double backward on every device.
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=head**-0.5)
        attended = torch.bmm(scores.softmax(-1), v).view(batch, self.heads, tokens, head)
        h = h + self.out(attended.transpose(1, 2).reshape(batch, tokens, d))
        # Atoms also read their bonds directly: the mean of their pair features.
        h = h + F.pad(self.pair_to_atom(layout.incidence @ pairs / layout.degree), (0, 0, 2, 0))

        x = self.norm2(h) * (1 + scale2) + shift2
        h = h + self.ff(x)
        if not update_pairs:
            return h, pairs

        atoms = h[:, 2:]
        left, right = self.pair_left(atoms), self.pair_right(atoms)
        i, j = layout.upper
        pairs = pairs + 0.5 * (left[:, i] * right[:, j] + left[:, j] * right[:, i])
        pairs = pairs + self.pair_ff(self.pair_norm(pairs))
        return h, pairs * layout.mask


class PairLayout:
    """Pair features are symmetric and zero on the diagonal, so the backbone keeps one row per pair
    i < j: (B, P, dp) with P = N(N - 1)/2 instead of (B, N, N, dp), less than half of the work of
    every per-pair layer. This holds the indices between the two layouts for one batch's mask."""

    def __init__(self, mask: torch.Tensor, dtype: torch.dtype):
        n = mask.shape[1]
        self.upper = torch.triu_indices(n, n, offset=1, device=mask.device)  # (2, P)
        i, j = self.upper
        pairs = i.numel()
        # square[a, b]: the row of pair {a, b}, or P (a zero row) on the diagonal.
        self.square = torch.full((n, n), pairs, dtype=torch.long, device=mask.device)
        self.square[i, j] = self.square[j, i] = torch.arange(pairs, device=mask.device)
        # incidence[a, p] = 1 when atom a is one end of pair p: incidence @ pairs sums an atom's pairs.
        self.incidence = torch.zeros(n, pairs, dtype=dtype, device=mask.device)
        self.incidence[i, torch.arange(pairs)] = self.incidence[j, torch.arange(pairs)] = 1.0
        self.mask = (mask[:, i] & mask[:, j])[..., None].to(dtype)  # (B, P, 1)
        self.degree = (self.incidence @ self.mask).clamp(min=1.0)  # (B, N, 1) real neighbours

    def pack(self, square: torch.Tensor) -> torch.Tensor:
        """(B, N, N, C) symmetric -> (B, P, C)."""
        return square[:, self.upper[0], self.upper[1]]

    def unpack(self, pairs: torch.Tensor) -> torch.Tensor:
        """(B, P, C) -> (B, N, N, C), symmetric, zero on the diagonal."""
        return torch.cat([pairs, pairs.new_zeros(pairs.shape[0], 1, pairs.shape[2])], dim=1)[:, self.square]


def _new_density_member(d: int, atom_terms: bool) -> tuple[nn.Module, nn.Module | None]:
    """One density member: an MLP on the [CLS] state and, with ``atom_terms``, one per atom state."""
    cls_head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))
    if not atom_terms:
        return cls_head, None
    atom_head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))
    # Zero at first, so that adding the atom terms to a trained model leaves its D unchanged.
    nn.init.zeros_(atom_head[-1].weight)
    nn.init.zeros_(atom_head[-1].bias)
    return cls_head, atom_head


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
        if config.repair_adapter:
            if not config.kekule_features:
                raise ValueError("the repair adapter is gated by the Kekulé features (--kekule-features)")
            self.repair = nn.Sequential(
                nn.Linear(a + extra_atom, config.repair_adapter), nn.SiLU(), nn.Linear(config.repair_adapter, d)
            )
            # Zero at first: adding the adapter to a trained model leaves it computing what it did.
            nn.init.zeros_(self.repair[-1].weight)
            nn.init.zeros_(self.repair[-1].bias)
        if config.repair_pair_adapter:
            if not config.repair_adapter:
                raise ValueError("the pair side of the repair adapter needs its atom side (repair_adapter)")
            # Each atom's estimate, valence and Kekulé features (the gate requires the latter).
            flags = a + sum(width for name, width in derived_atom_features(config) if name in ("valence", "kekule"))
            self.repair_pairs = nn.Sequential(
                nn.Linear(b + extra_bond + 2 * flags, config.repair_pair_adapter), nn.SiLU(),
                nn.Linear(config.repair_pair_adapter, dp),
            )
            nn.init.zeros_(self.repair_pairs[-1].weight)
            nn.init.zeros_(self.repair_pairs[-1].bias)
        self.bond_in = nn.Linear(b + extra_bond, dp)
        self.position = nn.Parameter(torch.zeros(config.max_atoms, d))
        nn.init.normal_(self.position, std=0.02)
        self.dist = nn.Embedding(config.num_distributions + 1, d)
        self.cls = nn.Parameter(torch.zeros(d))
        self.time = FourierEmbedding(config.fourier_features, d)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(d)
        self.atom_head = nn.Linear(d, a)
        self.bond_left = nn.Linear(d, dp)
        self.bond_right = nn.Linear(d, dp)
        self.bond_head = nn.Sequential(nn.LayerNorm(dp), nn.Linear(dp, dp), nn.GELU(), nn.Linear(dp, b))
        self.density_head, atom_head = _new_density_member(d, config.density_atom_terms)
        if atom_head is not None:
            self.density_atom_head = atom_head
        self.density_extra_members = nn.ModuleList(
            nn.ModuleList(head for head in _new_density_member(d, config.density_atom_terms) if head is not None)
            for _ in range(config.density_members - 1))
        # Running mean of the density targets (nats), kept by the trainer: the head then learns
        # differences between molecules (tens of nats) instead of chasing a level that falls from
        # thousands of nats to tens while the score head trains.
        self.register_buffer("density_offset", torch.zeros(()))

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
        return ModelOutput(atom_logits, bond_logits, self.density_of(h, mask), h)

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
            if self.config.ring_features:
                atom_inputs.append(ring_features(prev_bonds))
            if self.config.kekule_features:
                kekule = kekule_features(prev_atoms, prev_bonds, self.valences, self.bond_orders, self.matching_weights)
                atom_inputs.append(kekule)
            bond_inputs.append(prev_bonds)
        atom_inputs = torch.cat(atom_inputs, dim=-1)
        atoms = self.atom_in(atom_inputs) + self.position[:n]
        layout = PairLayout(mask, z_atoms.dtype)
        packed_bond_inputs = layout.pack(torch.cat(bond_inputs, dim=-1))
        pairs = self.bond_in(packed_bond_inputs)
        if self.config.repair_adapter and repair and self_cond is not None:
            # The window first: at noisier levels (the first part of every chain) the gate stays shut
            # and its graph checks are not worth computing.
            in_window = logsnr_atoms >= self.config.repair_min_logsnr
            if in_window.any():
                gate = repair_gate(prev_atoms, prev_bonds, kekule, self.valences, self.bond_orders) * in_window
                if gate.any():
                    atoms = atoms + gate[:, None, None] * self.repair(atom_inputs)
                    if self.config.repair_pair_adapter:
                        flags = torch.cat([prev_atoms, valence, kekule], dim=-1)
                        left, right = flags[:, layout.upper[0]], flags[:, layout.upper[1]]
                        # Sum and product: the same for either order of the pair's two atoms.
                        pair_inputs = torch.cat([packed_bond_inputs, left + right, left * right], dim=-1)
                        pairs = pairs + gate[:, None, None] * self.repair_pairs(pair_inputs)
        pairs = pairs * layout.mask

        time = self.time(logsnr_atoms, logsnr_bonds)
        special = torch.stack([self.dist(dist), self.cls.expand(batch, -1)], dim=1)
        h = torch.cat([special, atoms], dim=1) + time[:, None, :]
        key_mask = torch.cat([torch.ones(batch, 2, dtype=torch.bool, device=mask.device), mask], dim=1)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            h, pairs = block(h, pairs, key_mask, layout, time, update_pairs=final_pairs or index < last)
        return self.final_norm(h), layout.unpack(pairs) if final_pairs else None

    def density_member_heads(self, members: Sequence[int] | None = None) -> list[list[nn.Module]]:
        """Each member of the density head (or those of ``members``): its [CLS] head, then its per-atom
        head if it has terms."""
        first = [self.density_head] + ([self.density_atom_head] if self.config.density_atom_terms else [])
        every = [first] + [list(member) for member in self.density_extra_members]
        return every if members is None else [every[member] for member in members]

    def density_of(self, final_states: torch.Tensor, mask: torch.Tensor,
                   members: Sequence[int] | None = None) -> torch.Tensor:
        """The density head on final token states (B, 2 + N, d) with the atom mask (B, N): D in nats,
        the mean over its members, or over ``members`` alone."""
        chosen = self.density_member_heads(members)
        raw = 0.0
        for heads in chosen:
            raw = raw + heads[0](final_states[:, 1]).squeeze(-1)
            if len(heads) > 1:
                raw = raw + (heads[1](final_states[:, 2:]).squeeze(-1) * mask).sum(1)
        return raw / len(chosen) * self.config.density_scale + self.density_offset

    def density_parameters(self, members: Sequence[int] | None = None) -> list[nn.Parameter]:
        """The parameters of the density head (every member, or ``members``'), per-atom terms included."""
        return [parameter for heads in self.density_member_heads(members) for head in heads
                for parameter in head.parameters()]

    def with_density_members(self, count: int = 1) -> "DiScoFormer":
        """This model with ``count`` more density members, fresh as the constructor makes them, every weight
        carried over. D changes: the new members count once they are fit (``molgen distill --add-members``)."""
        upgraded = DiScoFormer(replace(self.config, density_members=self.config.density_members + count))
        missing, unexpected = upgraded.load_state_dict(self.state_dict(), strict=False)
        new_prefixes = tuple(f"density_extra_members.{index - 1}."
                             for index in range(self.config.density_members, upgraded.config.density_members))
        assert not unexpected and all(key.startswith(new_prefixes) for key in missing), (missing, unexpected)
        return upgraded

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


def posterior_probs(output: ModelOutput, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p(z_0 | z_t) as probabilities, zero outside real atoms and pairs: the model's x0 estimate."""
    atom_probs = output.atom_logits.softmax(-1) * mask[..., None]
    bond_probs = output.bond_logits.softmax(-1) * pair_mask_of(mask)[..., None]
    return atom_probs, bond_probs


def denoise(
    model: DiScoFormer,
    z_atoms: torch.Tensor,
    z_bonds: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    dist: torch.Tensor,
    noise: NoiseProcess,
    self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[ModelOutput, torch.Tensor, torch.Tensor]:
    """The model's output and x0 estimate at (z_t, t).

    A self-conditioned model without a previous estimate first predicts one (no gradient) and then
    conditions on it, as training does half of the time.
    """
    logsnr_atoms, logsnr_bonds = noise.atoms.logsnr(t), noise.bonds.logsnr(t)
    if model.config.self_conditioning and self_cond is None:
        with torch.no_grad():
            first = model(z_atoms, z_bonds, mask, logsnr_atoms, logsnr_bonds, dist)
            self_cond = posterior_probs(first, mask)
    output = model(z_atoms, z_bonds, mask, logsnr_atoms, logsnr_bonds, dist, self_cond)
    atom_probs, bond_probs = posterior_probs(output, mask)
    return output, atom_probs, bond_probs

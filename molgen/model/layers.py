"""The backbone's layers: the noise-level embedding, the pair layout and the Transformer block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierEmbedding(nn.Module):
    """Fourier features of the atoms' and bonds' log-SNR, through an MLP: the noise level as a vector."""

    def __init__(self, features: int, out: int):
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(features) * math.pi / 20.0, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * features, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, logsnr_atoms: torch.Tensor, logsnr_bonds: torch.Tensor) -> torch.Tensor:
        angles = torch.cat([logsnr_atoms[:, None], logsnr_bonds[:, None]], dim=1)[:, :, None] * self.frequencies
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1))


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


class Block(nn.Module):
    """Pre-norm Transformer block with pair-biased attention, adaLN, and a pair-feature update."""

    def __init__(self, d: int, d_pair: int, heads: int, d_ff: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.modulation = nn.Linear(d, 4 * d)  # shift/scale for both norms, from the noise embedding
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.pair_bias = nn.Linear(d_pair, heads)
        self.pair_to_atom = nn.Linear(d_pair, d)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        self.pair_norm = nn.LayerNorm(d_pair)
        self.pair_left = nn.Linear(d, d_pair)
        self.pair_right = nn.Linear(d, d_pair)
        self.pair_ff = nn.Sequential(nn.Linear(d_pair, 2 * d_pair), nn.GELU(), nn.Linear(2 * d_pair, d_pair))

    def forward(self, h, pairs, key_mask, layout: PairLayout, time, update_pairs: bool = True):
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


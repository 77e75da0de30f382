"""Low-rank adapters for one distribution: what `molgen adapt` learns beside a new [DIST] embedding.

Each adapted linear layer of the backbone's blocks (attention in and out, feed-forward in and out)
gains ``x @ down^T @ up^T * alpha / rank`` (LoRA, Hu et al. 2021), with ``up`` zero at first. The
term is added only for molecules of the adapted distribution: for every other [DIST] id, the null
one included, the model computes exactly what its base computes, bit for bit. The base's weights
stay untouched: the adapters sit beside them as forward hooks, so the state dict keeps the base's
keys and adds ``adapters.*``. The hooks belong to the model that built them: make an adapted model
from its config and state dict (as ``molgen.training.adapt.extended`` does), not by ``copy.deepcopy``.
"""

from __future__ import annotations

import torch
from torch import nn

from molgen.model.config import AdapterConfig
from molgen.model.density import DENSITY_SCALE, DensityMember, member_output

ADAPTED_LAYERS = ("qkv", "out", "ff.0", "ff.2")


class LowRank(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.down.weight, std=base.in_features ** -0.5)
        nn.init.zeros_(self.up.weight)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scale


class DistributionAdapters(nn.Module):
    """Low-rank updates of ``ADAPTED_LAYERS`` in every block, gated by the molecules' [DIST] id, and
    the distribution's own density term: a density member ([CLS] and per-atom terms) whose output is
    added to the shared head's before its bound, zero until `molgen adapt` fits it on ELBOs under the
    adapted distribution, plus the set's size term exactly (``size_shift``: log p_set(n) - log p_null(n),
    nats per heavy-atom count n). The member is fit on what remains: the shared head, under an id that
    started as the null one, prices sizes as the null distribution does, and a set's training molecules
    show the member no size the set lacks, where it would otherwise extrapolate (a 9-atom molecule scored
    like a typical member of a drug-like series)."""

    def __init__(self, blocks: nn.ModuleList, config: AdapterConfig, d: int, max_atoms: int):
        super().__init__()
        self.distribution = config.distribution
        self.density = DensityMember(d, atom_terms=True)
        nn.init.zeros_(self.density.cls[-1].weight)
        nn.init.zeros_(self.density.cls[-1].bias)
        self.register_buffer("size_shift", torch.zeros(max_atoms + 1))
        self.updates = nn.ModuleDict()
        self.gate: torch.Tensor | None = None  # (B,) bool, set per forward pass by :meth:`select`
        for index, block in enumerate(blocks):
            for name in ADAPTED_LAYERS:
                layer = block.get_submodule(name)
                key = f"{index}_{name.replace('.', '_')}"
                self.updates[key] = LowRank(layer, config.rank, config.alpha / config.rank)
                layer.register_forward_hook(self._hook(key))

    def density_term(self, final_states: torch.Tensor, mask: torch.Tensor, dist: torch.Tensor) -> torch.Tensor | None:
        """Nats (B,) to add to D for molecules of the adapted distribution, zero for the others; None
        when the batch has none."""
        gate = dist == self.distribution
        if not bool(gate.any()):
            return None
        term = member_output(self.density, final_states, mask) * DENSITY_SCALE + self.size_term(mask)
        return torch.where(gate, term, torch.zeros_like(term))

    def size_term(self, mask: torch.Tensor) -> torch.Tensor:
        """The set's size term (B,) for molecules of atom mask ``mask`` (B, N): log p_set(n) - log p_null(n)."""
        return self.size_shift[mask.sum(1).long()]

    def select(self, dist: torch.Tensor) -> None:
        gate = dist == self.distribution
        self.gate = gate if bool(gate.any()) else None

    def _hook(self, key: str):
        def add_update(module, inputs, output):
            if self.gate is None:
                return output
            update = self.updates[key](inputs[0])
            gate = self.gate.view(-1, *([1] * (output.dim() - 1)))
            return torch.where(gate, output + update, output)
        return add_update

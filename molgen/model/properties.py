"""The property head: RDKit-computable properties of the clean molecule, predicted from the noisy state.

It reads the backbone's final token states at any noise level and gives, per property, a Gaussian
(mean and standard deviation) over the property of the clean molecule z_0. The spread is learned
with the mean (Gaussian negative log-likelihood), so it widens with the noise: a window likelihood
``P(y in window | z_t)`` built on it is flat where the state says little and sharp near the clean end,
which is what keeps guidance from pushing hard on a guess (docs/design.md, section 5b).

Outputs are in standardised units inside the head (each property's training mean and standard
deviation, stored in :class:`PropertyConfig`), in the property's own units outside. The mean adds a
per-atom term summed over the atoms to a [CLS] term: molecular weight, TPSA, donors and acceptors are
sums over atoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

# Predicted standard deviations (standardised units) are kept in [e^-5, e^2]: a head that claims
# certainty to 1e-3 of a property's spread would turn guidance into a step function.
LOG_STD_RANGE = (-5.0, 2.0)
# The properties a chemist windows on (docs/design.md, 5b); heavy atoms and charge are the sampler's
# own choices (size, vocabulary), not things to guide.
GUIDED_PROPERTIES = ("qed", "clogp", "tpsa", "mw", "sa_score", "hbd", "hba", "rings", "rotatable_bonds")


@dataclass
class PropertyConfig:
    names: tuple[str, ...] = ()  # RDKit properties (molgen.checks.PROPERTIES); empty: no property head
    mean: tuple[float, ...] = ()  # per property, over the molecules the head was fit on
    std: tuple[float, ...] = ()

    def __post_init__(self):
        self.names, self.mean, self.std = tuple(self.names), tuple(map(float, self.mean)), tuple(map(float, self.std))
        if not len(self.names) == len(self.mean) == len(self.std):
            raise ValueError("a property head needs a mean and a standard deviation for every property")


class PropertyPrediction(NamedTuple):
    mean: torch.Tensor  # (B, P) in the properties' own units
    std: torch.Tensor  # (B, P)


class PropertyHead(nn.Module):
    def __init__(self, d: int, config: PropertyConfig):
        super().__init__()
        count = len(config.names)
        self.names = config.names
        self.cls = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 2 * count))
        self.atoms = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, count))
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32))

    def standardised(self, final_states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log standard deviation (B, P) in standardised units, from final token states
        (B, 2 + N, d) and the atom mask (B, N)."""
        count = len(self.names)
        cls = self.cls(final_states[:, 1])
        atoms = (self.atoms(final_states[:, 2:]) * mask[..., None].to(final_states.dtype)).sum(1)
        return cls[:, :count] + atoms, cls[:, count:].clamp(*LOG_STD_RANGE)

    def forward(self, final_states: torch.Tensor, mask: torch.Tensor) -> PropertyPrediction:
        mean, log_std = self.standardised(final_states, mask)
        return PropertyPrediction(self.mean + self.std * mean, self.std * log_std.exp())

    def index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"this model's property head predicts {', '.join(self.names)}; not {name!r}")
        return self.names.index(name)

"""Property targets and their window likelihood, the quantity guidance climbs (docs/design.md, 5b).

A target is a window on one RDKit property: ``qed>=0.6``, ``tpsa<=40``, ``clogp=1..3``. Given the
property head's Gaussian ``N(mean, std^2)`` for the clean molecule's property at the current noisy
state, the window's likelihood is ``P(low <= y <= high) = Phi((high - mean)/std) - Phi((low - mean)/std)``,
and several targets multiply (their log-likelihoods add). Its gradient with respect to the state,
times a guidance scale, is added to the score at every sampler step (classifier guidance,
Dhariwal & Nichol 2021): the sampler then follows ``p(z_t) p(y in window | z_t)^scale``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch.special import log_ndtr

from molgen.checks import CheckSpecError, Window, canonical_property

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class Target:
    """A window ``low <= prop <= high`` (either end may be open)."""

    prop: str
    low: float = -math.inf
    high: float = math.inf

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``prop>=v``, ``prop>v``, ``prop<=v``, ``prop<v`` or ``prop=low..high`` (strict and non-strict
        bounds are the same window for a continuous likelihood; the RDKit check keeps the operator)."""
        match = re.fullmatch(rf"\s*([A-Za-z_]+)\s*(>=|<=|>|<|=)\s*({_NUMBER})\s*(?:\.\.\s*({_NUMBER}))?\s*", text)
        if match is None:
            raise CheckSpecError(f"cannot parse target {text!r}: expected e.g. 'qed>=0.6', 'tpsa<=90' or 'clogp=1..3'")
        name, op, first, second = match.groups()
        prop = canonical_property(name)
        first = float(first)
        if op == "=":
            if second is None:
                raise CheckSpecError(f"target {text!r}: give a range, e.g. '{prop}={first:g}..{first + 1:g}'")
            if float(second) < first:
                raise CheckSpecError(f"target {text!r}: the range's low end is above its high end")
            return cls(prop, first, float(second))
        if second is not None:
            raise CheckSpecError(f"target {text!r}: a range takes '=', e.g. '{prop}={first:g}..{second}'")
        return cls(prop, low=first) if op.startswith(">") else cls(prop, high=first)

    def windows(self) -> tuple[Window, ...]:
        """The same window as RDKit checks (``molgen.checks.Window``), so that hits are judged on the
        molecules' computed properties."""
        return tuple(window for window, bound in ((Window(self.prop, ">=", self.low), self.low),
                                                  (Window(self.prop, "<=", self.high), self.high))
                     if math.isfinite(bound))

    def __str__(self) -> str:
        if math.isfinite(self.low) and math.isfinite(self.high):
            return f"{self.prop}={self.low:g}..{self.high:g}"
        return f"{self.prop}>={self.low:g}" if math.isfinite(self.low) else f"{self.prop}<={self.high:g}"


def parse_targets(texts) -> tuple[Target, ...]:
    return tuple(Target.parse(text) for text in texts)


def window_log_likelihood(mean: torch.Tensor, std: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """log P(low <= y <= high) for y ~ N(mean, std^2), elementwise, stable far inside and outside."""
    upper = (high - mean) / std
    lower = (low - mean) / std
    if not math.isfinite(low):
        return log_ndtr(upper)
    if not math.isfinite(high):
        return log_ndtr(-lower)
    # Phi(b) - Phi(a) loses everything to rounding when both are near 1: mirror to the tails, where
    # log_ndtr is exact, and take log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))).
    mirror = (lower + upper) > 0
    b = torch.where(mirror, -lower, upper)
    a = torch.where(mirror, -upper, lower)
    log_b, log_a = log_ndtr(b), log_ndtr(a)
    return log_b + torch.log1p(-torch.exp((log_a - log_b).clamp(max=-1e-6)))


def targets_log_likelihood(prediction_mean: torch.Tensor, prediction_std: torch.Tensor, names: tuple[str, ...],
                           targets: tuple[Target, ...]) -> torch.Tensor:
    """Sum over ``targets`` of each window's log-likelihood (B,) under the property head's prediction
    (B, P) over the properties ``names``."""
    total = prediction_mean.new_zeros(prediction_mean.shape[0])
    for target in targets:
        if target.prop not in names:
            raise CheckSpecError(f"this model's property head predicts {', '.join(names)}: it cannot guide "
                                 f"towards {target.prop}")
        column = names.index(target.prop)
        total = total + window_log_likelihood(prediction_mean[:, column], prediction_std[:, column],
                                              target.low, target.high)
    return total

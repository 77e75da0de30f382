"""Density metrics: AUROC between real molecules and decoys, calibration of density percentiles,
rank agreement (also against an exact target known only through noisy estimates), and the NLL
bound summary. Plain functions over arrays of scores."""

from __future__ import annotations

import numpy as np
import pandas as pd


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half
    (the Mann-Whitney statistic). Use -inf for a molecule a scorer rejects outright."""
    positives, negatives = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    if np.isnan(positives).any() or np.isnan(negatives).any():
        raise ValueError("AUROC scores contain NaN: map rejected molecules to -inf first")
    ranks = pd.Series(np.concatenate([positives, negatives])).rank(method="average").to_numpy()
    u = ranks[: len(positives)].sum() - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def reliability_of_mean(repeatability: float, estimates: int) -> float:
    """Spearman-Brown: how well the mean of ``estimates`` independent estimates, whose single estimates
    agree to ``repeatability``, agrees with another such mean: k r / (1 + (k - 1) r)."""
    return estimates * repeatability / (1 + (estimates - 1) * repeatability)


def spearman_against_exact(against_mean: float, repeatability: float, estimates: int) -> float | None:
    """Spearman(scores, exact target) from Spearman against the mean of ``estimates`` independent
    noisy estimates of the target, whose single estimates agree to ``repeatability``: Spearman's
    correction for attenuation, dividing by the square root of the mean's reliability (Spearman-Brown,
    k r / (1 + (k - 1) r)). Noise in the yardstick lowers a correlation however good the scores; the
    corrected figure does not depend on how many estimates were pooled. None when the estimates do not
    agree at all; clipped to [-1, 1], which sampling error can overshoot."""
    if not np.isfinite(against_mean) or not np.isfinite(repeatability) or repeatability <= 0:
        return None
    return float(np.clip(against_mean / np.sqrt(reliability_of_mean(repeatability, estimates)), -1.0, 1.0))


def spearman_against_exact_interval(scores: np.ndarray, first: np.ndarray, second: np.ndarray,
                                    level: float = 0.95, resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval over molecules for :func:`spearman_against_exact` of ``scores``
    against the mean of two independent estimates ``first`` and ``second`` of the target: how far the
    figure could move with another draw of as many molecules. Molecules missing any value are left out;
    None when fewer than 3 remain or no resample gives a figure."""
    columns = np.column_stack([scores, first, second]).astype(float)
    columns = columns[np.isfinite(columns).all(1)]
    if len(columns) < 3:
        return None
    rng = np.random.default_rng(seed)
    figures = []
    for _ in range(resamples):
        drawn = columns[rng.integers(0, len(columns), len(columns))]
        repeatability = spearman(drawn[:, 1], drawn[:, 2])
        figure = spearman_against_exact(spearman(drawn[:, 0], drawn[:, 1:].mean(1)), repeatability, estimates=2)
        if figure is not None:
            figures.append(figure)
    if not figures:
        return None
    tail = (1 - level) / 2 * 100
    return [float(bound) for bound in np.percentile(figures, [tail, 100 - tail])]


def calibration(percentiles: np.ndarray) -> dict:
    """How uniformly held-out molecules spread over density percentiles (0-100), as they should if
    the stored quantiles describe their distribution: the Kolmogorov-Smirnov distance to uniform,
    the share under the default 5th-percentile cut (ideal 0.05), and the share per decile (ideal 0.1)."""
    values = np.sort(np.asarray(percentiles, dtype=float)[~np.isnan(percentiles)] / 100.0)
    n = len(values)
    if n == 0:
        return {"molecules": 0, "ks_distance": None, "share_below_5th": None, "deciles": None}
    empirical_high = np.arange(1, n + 1) / n
    empirical_low = np.arange(0, n) / n
    ks = float(max(np.max(empirical_high - values), np.max(values - empirical_low)))
    deciles = np.histogram(values, bins=np.linspace(0, 1, 11))[0] / n
    return {"molecules": n, "ks_distance": ks, "share_below_5th": float((values < 0.05).mean()),
            "deciles": [round(float(share), 4) for share in deciles]}


def mean_with_stderr(values: np.ndarray, per_item_stderr: np.ndarray | None = None) -> dict:
    """Mean over molecules with the standard error of that mean over the sampled molecules, and,
    when given, the Monte-Carlo part from each molecule's own standard error."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return {"mean": float(values.mean()) if len(values) else None, "stderr": None, "molecules": int(len(values))}
    out = {"mean": float(values.mean()), "stderr": float(values.std(ddof=1) / np.sqrt(len(values))),
           "molecules": int(len(values))}
    if per_item_stderr is not None:
        out["monte_carlo_stderr"] = float(np.sqrt((np.asarray(per_item_stderr) ** 2).sum()) / len(values))
    return out


def agreement_by_group(scores: np.ndarray, targets: np.ndarray, groups: np.ndarray, min_count: int = 30) -> list[dict]:
    """Per group (e.g. heavy-atom count) with at least ``min_count`` members: how many, Spearman of
    ``scores`` with ``targets``, and their mean absolute difference (both in the same units)."""
    out = []
    for group in np.unique(groups):
        chosen = groups == group
        if chosen.sum() < min_count:
            continue
        out.append({"group": int(group), "count": int(chosen.sum()), "spearman": spearman(scores[chosen], targets[chosen]),
                    "mean_absolute_difference": float(np.abs(scores[chosen] - targets[chosen]).mean())})
    return out


"""Fitting the property head on the model's own training molecules, the backbone frozen.

The targets need no labels: RDKit computes each training molecule's properties. Each step draws
molecules, a noise level t ~ U(0, 1) per molecule and the noisy state z_t, runs the frozen model as
the sampler does (self-conditioned on its own first estimate, :func:`molgen.model.denoise`), and fits
the head's Gaussian to the clean molecule's properties by negative log-likelihood. One molecule in
ten goes in under the null distribution id, as in training, so guidance also works there.

Only the property head is new; the score and density heads, the backbone and every figure of the
model stay as they were.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from molgen.checkpoint import save_checkpoint
from molgen.checks import PROPERTIES
from molgen.chemistry import parse_smiles_with_reason
from molgen.model import denoise
from molgen.model.properties import GUIDED_PROPERTIES, PropertyConfig
from molgen.noise import noised
from molgen.training.data import TrainingData, held_out_rows
from molgen.training.distill import read_frozen_model

# Noise levels the fit is judged at: t = 0 is the clean molecule, t = 1 pure noise.
CHECK_TIMES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)
NULL_SHARE = 0.1


@dataclass
class PropertyFitConfig:
    names: tuple[str, ...] = GUIDED_PROPERTIES
    molecules: int = 50_000  # training molecules whose properties are computed (all of them if fewer)
    steps: int = 3_000
    minutes: float | None = None  # stop earlier when this budget is spent (the schedule follows the steps)
    batch_size: int = 256
    lr: float = 1e-3
    check_molecules: int = 1_000
    seed: int = 0
    device: str = "cpu"
    workers: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def _properties_of(task: tuple[list[str], tuple[str, ...]]) -> np.ndarray:
    smiles, names = task
    out = np.full((len(smiles), len(names)), np.nan)
    for row, text in enumerate(smiles):
        mol, _ = parse_smiles_with_reason(text)
        if mol is not None:
            out[row] = [PROPERTIES[name](mol) for name in names]
    return out


def property_table(smiles: list[str], names: tuple[str, ...], workers: int = 1) -> np.ndarray:
    """RDKit properties ``names`` of each SMILES (rows x properties); NaN where RDKit cannot parse it."""
    tasks = [(smiles[start : start + 2_000], names) for start in range(0, len(smiles), 2_000)]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_properties_of, tasks))
    else:
        parts = [_properties_of(task) for task in tasks]
    return np.concatenate(parts) if parts else np.zeros((0, len(names)))


@torch.no_grad()
def _states(model, noise, data: TrainingData, rows: np.ndarray, t: torch.Tensor, generator, null: torch.Tensor):
    """Final token states (B, 2 + N, d) at noise level ``t`` of the molecules ``rows``, as the sampler sees
    them, and their atom mask."""
    batch, dist = data.batch(rows)
    device = t.device
    batch, dist = batch.to(device), dist.to(device)
    dist = torch.where(null, torch.full_like(dist, model.null_distribution), dist)
    x_atoms, x_bonds = batch.one_hot(model.config.num_atom_types, model.config.num_bond_types)
    z_atoms, z_bonds, _, _ = noised(x_atoms, x_bonds, batch.mask, t, noise, generator)
    output, _, _ = denoise(model, z_atoms, z_bonds, batch.mask, t, dist, noise)
    return output.final_states, batch.mask


def property_errors(model, noise, data: TrainingData, rows: np.ndarray, targets: np.ndarray, seed: int,
                    times=CHECK_TIMES) -> dict:
    """Per property and noise level on ``rows`` (with their RDKit ``targets``): mean absolute error, R^2,
    and the share of molecules within the predicted one standard deviation (0.68 when calibrated)."""
    head = model.properties
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    device = next(model.parameters()).device
    report = {name: {"mae": [], "r2": [], "within_1sd": []} for name in head.names}
    for level in times:
        means, stds = [], []
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            t = torch.full((len(chunk),), float(level), device=device)
            states, mask = _states(model, noise, data, chunk, t, generator, torch.zeros(len(chunk), dtype=torch.bool, device=device))
            with torch.no_grad():
                prediction = head(states, mask)
            means.append(prediction.mean.cpu().numpy())
            stds.append(prediction.std.cpu().numpy())
        mean, std = np.concatenate(means), np.concatenate(stds)
        for column, name in enumerate(head.names):
            truth, error = targets[:, column], mean[:, column] - targets[:, column]
            report[name]["mae"].append(float(np.abs(error).mean()))
            report[name]["r2"].append(float(1 - np.mean(error**2) / max(np.var(truth), 1e-12)))
            report[name]["within_1sd"].append(float(np.mean(np.abs(error) <= std[:, column])))
    return {"times": list(times), "molecules": int(len(rows)), "properties": report}


def fit_property_head(model, noise, data: TrainingData, config: PropertyFitConfig,
                      log: Callable[[str], None] = lambda message: None) -> tuple[object, dict]:
    """``model`` with a property head fit on ``data``'s training molecules (returned with the report)."""
    rng = np.random.default_rng(config.seed)
    train = rng.permutation(data.indices("train"))[: config.molecules]
    check = rng.permutation(held_out_rows(data))[: config.check_molecules]
    started = time.perf_counter()
    values = property_table([str(s) for s in data.smiles[train]], config.names, config.workers)
    check_values = property_table([str(s) for s in data.smiles[check]], config.names, config.workers)
    train, values = train[~np.isnan(values).any(1)], values[~np.isnan(values).any(1)]
    check, check_values = check[~np.isnan(check_values).any(1)], check_values[~np.isnan(check_values).any(1)]
    log(f"RDKit properties of {len(train):,} training molecules in {time.perf_counter() - started:.0f} s")
    mean, std = values.mean(0), np.maximum(values.std(0), 1e-6)
    with torch.random.fork_rng(devices=[]):  # the head's initial weights, seeded without side effects
        torch.manual_seed(config.seed)
        model = model.with_new_module("properties", properties=PropertyConfig(config.names, mean.tolist(), std.tolist()))
    device = torch.device(config.device)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head = model.properties
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    standardised = torch.from_numpy((values - mean) / std).float().to(device)
    started = time.perf_counter()
    losses = []
    step = 0
    for step in range(1, config.steps + 1):
        picks = rng.integers(0, len(train), config.batch_size)
        t = torch.rand(config.batch_size, generator=generator, device=device)
        null = torch.rand(config.batch_size, generator=generator, device=device) < NULL_SHARE
        states, mask = _states(model, noise, data, train[picks], t, generator, null)
        predicted, log_std = head.standardised(states, mask)
        target = standardised[torch.from_numpy(picks).to(device)]
        loss = (0.5 * ((target - predicted) * torch.exp(-log_std)) ** 2 + log_std).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0:
            elapsed = time.perf_counter() - started
            log(f"property head: step {step:,}/{config.steps:,}, Gaussian NLL {np.mean(losses[-100:]):.3f} ({elapsed:.0f} s)")
            if config.minutes is not None and elapsed > 60 * config.minutes:
                break
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    report = {
        "config": {**config.to_dict(), "names": list(config.names)},
        "steps": step,
        "seconds": time.perf_counter() - started,
        "train_molecules": int(len(train)),
        "final_nll": float(np.mean(losses[-100:])) if losses else None,
        "held_out": property_errors(model, noise, data, check, check_values, config.seed + 1),
    }
    return model, report


def fit_properties_checkpoint(source: str | Path, data: TrainingData, config: PropertyFitConfig,
                              output: str | Path | None = None,
                              log: Callable[[str], None] = lambda message: None) -> dict:
    """Fit a property head onto the checkpoint ``source`` (trained on ``data``) and write the result to
    ``output`` (default: in place, atomically). Any earlier property head is replaced."""
    payload, model, noise, _ = read_frozen_model(source, data, config.device)
    model, report = fit_property_head(model, noise, data, config, log)
    payload["ema"] = model.cpu().state_dict()
    payload["model_config"] = model.config.to_dict()
    payload["meta"]["parameters"] = model.num_parameters()
    payload["meta"]["property_head"] = report
    save_checkpoint(payload, output or source)
    return report

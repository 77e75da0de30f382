"""Fitting the density head's near-miss term, everything else frozen.

The members of the density head learn the model's ELBO, and that ELBO ranks a held-out QM9 molecule
above its single-edit mutants only 90.6% of the time (AUROC; the SMILES Transformer reference 98.3%).
The final token states the head reads carry more: a classifier on them, fit to tell training
molecules from single-edit mutants of training molecules, separates held-out molecules from their
own mutants at 0.95 (docs/notes/near-miss-term.md). D adds that classifier's log-probability that the
molecule is a real one, log P(real | molecule) <= 0: D stays a log-probability, a molecule the
classifier calls real keeps its ELBO value within a fraction of a nat, and a near miss loses what the
classifier is sure of.

Positives are training molecules, negatives single-edit mutants of other training molecules that are
in none of the data's splits, weighted to equal shares; a tenth of each is read under the null
distribution id, so the term holds there too. The fit is judged on held-out molecules against their
own mutants (the split the calibration uses; the test split stays untouched), and the calibration
percentiles are recomputed with the new D.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from molgen.checkpoint import DENSITY_HEAD_FIGURES, save_checkpoint
from molgen.likelihood import clean_states
from molgen.model import DiScoFormer
from molgen.model.density import NearMissTerm
from molgen.noise import NoiseProcess
from molgen.stats import auroc, spearman
from molgen.training.data import BatchOf, TrainingData, held_out_rows, with_mutants
from molgen.training.distill import held_out_calibration, joined, read_frozen_model

CHUNK = 500  # molecules per forward pass of the frozen backbone


@dataclass
class NearMissConfig:
    molecules: int = 50_000  # training molecules: the positives
    mutants: int = 50_000  # single-edit mutants of other training molecules: the negatives
    epochs: int = 100
    minutes: float | None = None  # stop earlier when this budget is spent (the schedule follows the epochs)
    lr: float = 1e-3
    batch_size: int = 256
    check_molecules: int = 1_000  # held-out molecules (and their mutants) the fit is judged on
    null_share: float = 0.1
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def states_of(model: DiScoFormer, noise: NoiseProcess, batch_of: BatchOf, rows: np.ndarray,
              null: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean-end token states (M, 2 + N, d), atom masks (M, N) and distribution ids (M,) of ``rows``;
    where ``null`` (M,) is true, under the null id instead of the molecule's own."""
    device = next(model.parameters()).device
    states, masks, dists = [], [], []
    for start in range(0, len(rows), CHUNK):
        batch, dist = batch_of(rows[start : start + CHUNK])
        if null is not None:
            dist = torch.where(torch.from_numpy(null[start : start + CHUNK]), model.null_distribution, dist)
        batch, dist = batch.to(device), dist.to(device)
        states.append(clean_states(model, batch, dist, noise))
        masks.append(batch.mask)
        dists.append(dist)
    return (*joined(states, masks), torch.cat(dists))


def fit_near_miss_term(model: DiScoFormer, noise: NoiseProcess, data: TrainingData, config: NearMissConfig,
                       log: Callable[[str], None] = lambda message: None) -> dict:
    """Fit ``model``'s near-miss term in place (the model must have one, :func:`with_near_miss_term`) and
    return its figures on held-out molecules against their own single-edit mutants."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    positives = rng.permutation(data.indices("train"))[: config.molecules]
    batch_of, negatives = with_mutants(data, config.mutants, config.seed)
    held_out = rng.permutation(held_out_rows(data))[: config.check_molecules]
    check_batch_of, check_mutants = with_mutants(data, len(held_out), config.seed + 1, parent_rows=held_out)
    log(f"{len(positives):,} training molecules against {len(negatives):,} single-edit mutants; "
        f"judged on {len(held_out):,} held-out molecules against {len(check_mutants):,} of theirs")
    rows = np.concatenate([positives, negatives])
    states, masks, _ = states_of(model, noise, batch_of, rows, rng.random(len(rows)) < config.null_share)
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).to(states.device)
    log("states of the fit computed")
    epochs, fit_auroc = train_classifier(model.density.near_miss, states, masks, labels, config,
                                         lambda message: log(f"{message} ({time.perf_counter() - started:.0f} s)"))
    return {"config": config.to_dict(), "epochs": epochs, "seconds": time.perf_counter() - started,
            "positives": int(len(positives)), "negatives": int(len(negatives)),
            "auroc_fit_rows_term": fit_auroc,
            **held_out_figures(model, noise, data.batch, held_out, check_batch_of, check_mutants)}


def train_classifier(term: NearMissTerm, states: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                     config: NearMissConfig, log: Callable[[str], None] = lambda message: None) -> tuple[int, float]:
    """Fit ``term`` to tell ``states`` (M, 2 + N, d) with ``labels`` (M,) 1 from those with 0 (the classes
    weighted to equal shares), standardised to these states; returns the epochs run and the AUROC on
    up to 10,000 of its own rows, beside the held-out figure: how much of the fit is memory."""
    started = time.perf_counter()
    weights = torch.where(labels == 1, 0.5 / labels.mean(), 0.5 / (1 - labels.mean()))
    term.standardise_to(states, masks)
    optimizer = torch.optim.Adam(term.parameters(), lr=config.lr)  # the member's: the statistics are buffers
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    order_generator = torch.Generator().manual_seed(config.seed)
    epochs = 0
    for epochs in range(1, config.epochs + 1):
        order = torch.randperm(len(labels), generator=order_generator).to(states.device)
        for start in range(0, len(labels), config.batch_size):
            index = order[start : start + config.batch_size]
            logits = term(states[index], masks[index])
            loss = (F.binary_cross_entropy_with_logits(logits, labels[index], reduction="none") * weights[index]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        if epochs % 10 == 0:
            log(f"near-miss term: epoch {epochs}/{config.epochs}, loss {loss.item():.3f}")
        if config.minutes is not None and time.perf_counter() - started > 60 * config.minutes:
            break
    with torch.no_grad():
        seen = torch.randperm(len(labels), generator=order_generator)[:10_000].to(states.device)
        logits = term(states[seen], masks[seen]).cpu().numpy()
        real = labels[seen].cpu().numpy() == 1
    return epochs, auroc(logits[real], logits[~real])


@torch.no_grad()
def held_out_figures(model: DiScoFormer, noise: NoiseProcess, batch_of: BatchOf, held_out: np.ndarray,
                     mutant_batch_of: BatchOf, mutants: np.ndarray) -> dict:
    """AUROC against the mutants of D without the term, of the term alone and of D with it; how much
    the term moves held-out molecules, and their order."""
    figures = {}
    for name, source, rows in (("held_out", batch_of, held_out), ("mutants", mutant_batch_of, mutants)):
        states, masks, dists = states_of(model, noise, source, rows)
        term = model.density.near_miss_term(states, masks)
        with_term = model.density_of(states, masks, dists)
        figures[name] = ((with_term - term).cpu().numpy(), term.cpu().numpy(), with_term.cpu().numpy())
    (real_before, real_term, real_after), (fake_before, fake_term, fake_after) = figures["held_out"], figures["mutants"]
    return {
        "check_molecules": int(len(held_out)), "check_mutants": int(len(mutants)),
        "auroc_vs_mutants_before": auroc(real_before, fake_before),
        "auroc_vs_mutants_term": auroc(real_term, fake_term),
        "auroc_vs_mutants_after": auroc(real_after, fake_after),
        "median_term_held_out_nats": float(np.median(real_term)),
        "median_term_mutants_nats": float(np.median(fake_term)),
        "spearman_held_out_before_after": spearman(real_before, real_after),
    }


def with_near_miss_term(model: DiScoFormer) -> DiScoFormer:
    """``model`` with a fresh near-miss term (replacing one it has), every other weight carried over."""
    return model.with_new_module("density.near_miss", density=replace(model.config.density, near_miss_term=True))


def fit_near_miss_checkpoint(source: str | Path, data: TrainingData, config: NearMissConfig,
                             output: str | Path | None = None, log: Callable[[str], None] = lambda message: None) -> dict:
    """Give the checkpoint ``source`` (trained on ``data``) a near-miss term fit on ``data``, recalibrate
    its percentiles and write it to ``output`` (default: in place, atomically)."""
    payload, model, noise, _ = read_frozen_model(source, data, config.device)
    with torch.random.fork_rng(devices=[]):  # the term's initial weights, seeded without side effects
        torch.manual_seed(config.seed)
        model = with_near_miss_term(model).to(config.device)
    model.eval()
    report = fit_near_miss_term(model, noise, data, config, log)
    payload["calibration"] = held_out_calibration(model, noise, data, config.device)
    payload["ema"] = model.cpu().state_dict()
    payload["model_config"] = model.config.to_dict()
    payload["meta"]["parameters"] = model.num_parameters()
    payload["meta"]["near_miss"] = report
    if payload.get("evaluation"):  # the card's figures of the head without the term would pass for D's
        payload["evaluation"] = {key: value for key, value in payload["evaluation"].items()
                                 if key not in DENSITY_HEAD_FIGURES}
    save_checkpoint(payload, output or source)
    return report

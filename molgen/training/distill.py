"""Distilling the model's own ELBO into its density head, the backbone frozen.

During training the density head regresses onto 8-level ELBO estimates of 16 molecules per batch:
cheap, but on QM9 those targets carry more Monte-Carlo noise than the molecules differ (a few nats),
so the head learns mostly the mean and the size. This pass fixes that after training:

1. an importance proposal over noise levels (:func:`molgen.likelihood.importance_proposal`) from a
   pilot batch, which cuts the ELBO's variance at equal cost;
2. low-variance ELBO targets for many training molecules and some single-edit mutants of them (so
   the head also learns what the model thinks just off the data), with the final token states of
   the same molecules at the clean end (what the density head reads);
3. the head refit on those pairs under a Huber loss (Adam), judged on held-out molecules against an
   independent, higher-precision ELBO. By default the head gains per-atom terms
   (``DensityConfig.atom_terms``) if it has none: the ELBO is a sum over atoms and pairs;
4. the calibration quantiles recomputed with the new head on the held-out molecules.

With ``add_members`` the current head is kept and that many more members of it
(``DensityConfig.members``) are fit on one set of fresh targets under the stored proposal, each
from its own initialisation and batch order; D becomes the members' mean. Each member's error is
partly its own targets' Monte-Carlo noise, which another target set does not share, and partly its
fit's own draw, which another fit does not share. On the bundled QM9 model (Spearman against the exact
ELBO of 1,000 validation molecules) members fit on 150,000 GPU and 50,000 CPU targets score 0.888 and
0.887 alone and 0.907 together; three fits of another 50,000 targets score 0.884 to 0.897 alone and
0.909 together; all five 0.918.

Only the density head and the density offset change, so sampling (the score head) is untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from molgen.checkpoint import DENSITY_HEAD_FIGURES, read_checkpoint, save_checkpoint
from molgen.likelihood import MAX_ELBO_ROWS, clean_states, elbo, importance_proposal, log_density
from molgen.model import DiScoConfig, DiScoFormer
from molgen.noise import NoiseProcess
from molgen.stats import spearman
from molgen.training.data import BatchOf, TrainingData, calibration_quantiles, held_out_rows, with_mutants


@dataclass
class DistillConfig:
    molecules: int = 20_000  # targets in all: training molecules and mutants of them
    elbo_samples: int = 16  # noise levels per target
    check_molecules: int = 500  # held-out molecules to judge the fit on
    check_samples: int = 64  # noise levels per held-out ELBO
    pilot_molecules: int = 256  # molecules the importance proposal is estimated on
    mutant_share: float = 0.25  # share of targets that are single-edit mutants of training molecules
    atom_terms: bool = True  # give the head per-atom terms (summed) if it has none
    epochs: int = 600
    lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"  # where the ELBOs are estimated and the head refit (the result is stored on CPU)
    # Molecules x noise levels per forward call of the ELBO. On a GPU the per-call overhead, not the
    # arithmetic, bounds this small model: 65,536 there instead of the CPU's 2,048.
    elbo_rows: int = MAX_ELBO_ROWS
    # Residuals past this many nats cost linearly, not squared: some mutants' ELBOs run to hundreds of
    # nats, and least squares spends the head on that tail instead of ranking the molecules near the
    # data (on 20,000 targets: held-out Spearman 0.29 -> 0.66, AUROC vs mutants 0.82 -> 0.90). 0: squares.
    huber_nats: float = 2.0
    # Keep the density head and fit this many more members of it on fresh targets (see the module
    # docstring); 0 refits the whole head.
    add_members: int = 0
    fresh_head: bool = False  # every member from the constructor's start, not from the trained head

    def to_dict(self) -> dict:
        return asdict(self)




@torch.no_grad()
def clean_states_and_elbo(
    model: DiScoFormer, noise: NoiseProcess, batch_of: BatchOf, rows: np.ndarray, size_log_probs: torch.Tensor,
    samples: int, proposal: torch.Tensor | None, generator: torch.Generator, max_rows: int = MAX_ELBO_ROWS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final token states at the clean end (M, 2 + N, d), atom masks (M, N) and ELBO estimates (M,)
    for ``rows``, with at most ``max_rows`` molecules x levels per forward call; N is the largest
    molecule of ``rows``."""
    states, masks, targets = [], [], []
    device = next(model.parameters()).device
    chunk = max(500, max_rows // samples)
    for start in range(0, len(rows), chunk):
        batch, dist = batch_of(rows[start : start + chunk])
        batch, dist = batch.to(device), dist.to(device)
        states.append(clean_states(model, batch, dist, noise))
        masks.append(batch.mask)
        estimate, _ = elbo(model, batch, dist, noise, size_log_probs[dist], samples, generator, proposal=proposal,
                           max_rows=max_rows)
        targets.append(estimate)
    return (*joined(states, masks), torch.cat(targets))


def joined(states: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks of token states (M_k, 2 + N_k, d) and atom masks (M_k, N_k) as one of each. Each chunk is
    padded to its own largest molecule: they are padded to the largest of all (masked out, as in one batch)."""
    n = max(mask.shape[1] for mask in masks)
    states = [torch.cat([s, s.new_zeros(s.shape[0], n + 2 - s.shape[1], s.shape[2])], 1) for s in states]
    masks = [torch.cat([m, m.new_zeros(m.shape[0], n - m.shape[1])], 1) for m in masks]
    return torch.cat(states), torch.cat(masks)


@torch.no_grad()
def held_out_calibration(model: DiScoFormer, noise: NoiseProcess, data: TrainingData, device: str) -> dict:
    """The calibration quantiles of ``model``'s D on ``data``'s held-out molecules, per distribution."""
    held_out = held_out_rows(data)
    densities, dists = [], []
    for start in range(0, len(held_out), 500):
        batch, dist = data.batch(held_out[start : start + 500])
        densities.append(log_density(model, batch.to(device), dist.to(device), noise).cpu().numpy())
        dists.append(dist.numpy())
    return calibration_quantiles(np.concatenate(densities), np.concatenate(dists), data.names)


def with_atom_terms(model: DiScoFormer) -> DiScoFormer:
    """``model`` with per-atom density terms added (zero at first, so D is unchanged until refit)."""
    density = model.config.density
    if density.atom_terms:
        return model
    return model.with_new_module(tuple(f"density.members.{index}.atoms" for index in range(density.members)),
                                 density=replace(density, atom_terms=True))


@dataclass
class DistillationTargets:
    """What the head is refit on: the clean-end token states, atom masks and ELBO targets of the target
    molecules, and of the held-out check molecules two independent ELBOs (fit and repeatability)."""

    proposal: torch.Tensor
    states: torch.Tensor
    masks: torch.Tensor
    elbos: torch.Tensor
    check_states: torch.Tensor
    check_masks: torch.Tensor
    check_elbos: torch.Tensor
    check_repeat_elbos: torch.Tensor


def pilot_proposal(model: DiScoFormer, noise: NoiseProcess, batch_of: BatchOf, rows: np.ndarray,
                   generator: torch.Generator) -> torch.Tensor:
    """The ELBO's importance proposal (:func:`molgen.likelihood.importance_proposal`) on ``rows``."""
    device = next(model.parameters()).device
    pilot, pilot_dist = batch_of(rows)
    return importance_proposal(model, pilot.to(device), pilot_dist.to(device), noise, generator=generator)


def distillation_targets(
    model: DiScoFormer, noise: NoiseProcess, batch_of: BatchOf, target_rows: np.ndarray, check_rows: np.ndarray,
    size_log_probs: torch.Tensor, config: DistillConfig, log: Callable[[str], None] = lambda message: None,
    proposal: torch.Tensor | None = None,
) -> DistillationTargets:
    """The ELBO targets of ``target_rows`` and ``check_rows`` under ``proposal``, by default an importance
    proposal estimated on the first ``pilot_molecules`` target rows: the expensive part of distillation."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    model.eval()
    if proposal is None:
        proposal = pilot_proposal(model, noise, batch_of, target_rows[: config.pilot_molecules], generator)
        log("importance proposal estimated")
    proposal = proposal.to(device)
    states, masks, elbos = clean_states_and_elbo(model, noise, batch_of, target_rows, size_log_probs,
                                                 config.elbo_samples, proposal, generator, config.elbo_rows)
    log(f"{len(target_rows):,} training targets ({config.elbo_samples} levels each)")
    check_states, check_masks, check_elbos = clean_states_and_elbo(
        model, noise, batch_of, check_rows, size_log_probs, config.check_samples, proposal, generator, config.elbo_rows)
    *_, check_repeat_elbos = clean_states_and_elbo(model, noise, batch_of, check_rows, size_log_probs,
                                                   config.check_samples, proposal, generator, config.elbo_rows)
    return DistillationTargets(proposal, states, masks, elbos, check_states, check_masks, check_elbos,
                               check_repeat_elbos)


def fit_density_head(model: DiScoFormer, targets: DistillationTargets, config: DistillConfig,
                     members: list[int] | None = None) -> dict:
    """Refit ``model``'s density head (with its atom terms if it has them) in place on ``targets``:
    all of it, its offset set to the targets' mean; or, with ``members``, each of those members on its
    own output in turn (its own batch order), the others and the offset kept. Returns before/after
    figures on the check molecules; "before" is the head without ``members``."""
    check_elbos = targets.check_elbos.cpu().numpy()

    def check_density(chosen: list[int] | None) -> np.ndarray:
        with torch.no_grad():
            return model.density(targets.check_states, targets.check_masks, chosen).cpu().numpy()

    def check_spearman(chosen: list[int] | None) -> float:
        return spearman(check_density(chosen), -check_elbos)

    kept = None if members is None else [k for k in range(model.config.density.members) if k not in members]
    before = check_spearman(kept)
    if members is None:
        model.density.offset.fill_(float(-targets.elbos.mean()))
    fits = [None] if members is None else [[member] for member in members]  # the whole head, or one member at a time
    for position, fitted in enumerate(fits):
        fit_members(model, targets, config, fitted, seed=config.seed + position)
    after_values = check_density(None)
    return {
        "proposal": targets.proposal.tolist(),
        "config": config.to_dict(),
        "check_molecules": int(len(check_elbos)),
        "spearman_density_elbo_before": before,
        "spearman_density_elbo_after": spearman(after_values, -check_elbos),
        "check_elbo_repeatability": spearman(-check_elbos, -targets.check_repeat_elbos.cpu().numpy()),
        "train_target_mean_nats": float(targets.elbos.mean()),
        "check_rmse_nats": float(np.sqrt(np.mean((after_values + check_elbos) ** 2))),
        **({} if members is None else {
            "members": members,
            "spearman_each_new_member": [check_spearman([member]) for member in members],
            "spearman_new_members": check_spearman(members)}),
    }


def fit_members(model: DiScoFormer, targets: DistillationTargets, config: DistillConfig, members: list[int] | None,
                seed: int) -> None:
    """Fit the density head's ``members`` (default: all) on their own mean output to ``targets`` (Adam, a
    cosine schedule over ``config.epochs`` passes in an order drawn from ``seed``)."""
    parameters = model.density.parameters_of(members)
    trainable = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:  # an EMA copy has grads off
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    order_generator = torch.Generator().manual_seed(seed)
    for _ in range(config.epochs):
        order = torch.randperm(len(targets.states), generator=order_generator).to(targets.states.device)
        for start in range(0, len(targets.states), config.batch_size):
            index = order[start : start + config.batch_size]
            predicted = model.density(targets.states[index], targets.masks[index], members, bound=False)
            wanted = -targets.elbos[index]
            loss = (torch.nn.functional.huber_loss(predicted, wanted, delta=config.huber_nats) if config.huber_nats > 0
                    else torch.nn.functional.mse_loss(predicted, wanted))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    for parameter, flag in zip(parameters, trainable):
        parameter.requires_grad_(flag)


def distill_density_head(
    model: DiScoFormer, noise: NoiseProcess, batch_of: BatchOf, target_rows: np.ndarray, check_rows: np.ndarray,
    size_log_probs: torch.Tensor, config: DistillConfig, log: Callable[[str], None] = lambda message: None,
    proposal: torch.Tensor | None = None,
) -> dict:
    """Refit ``model``'s density head in place on the ELBOs of ``target_rows`` under ``proposal`` (default:
    a pilot's), with ``config.add_members`` only that many last members; returns the proposal and
    before/after figures on ``check_rows``."""
    targets = distillation_targets(model, noise, batch_of, target_rows, check_rows, size_log_probs, config, log,
                                   proposal)
    count = model.config.density.members
    new_members = list(range(count - config.add_members, count)) if config.add_members else None
    return fit_density_head(model, targets, config, new_members)


def read_frozen_model(source: str | Path, data: TrainingData, device: str):
    """The checkpoint ``source`` (trained on ``data``): its payload, its EMA model on ``device``, its
    noise process and its log p(n) tables on ``device``."""
    payload = read_checkpoint(source)
    if payload["meta"]["data_fingerprints"] != data.fingerprints:
        raise ValueError("the checkpoint was trained on other data (fingerprints differ)")
    model = DiScoFormer(DiScoConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["ema"])  # copied into float32 parameters, also from a float16 export
    size_log_probs = torch.log(torch.tensor(payload["size_distributions"], dtype=torch.float32) + 1e-12)
    return payload, model.to(device), NoiseProcess.from_dict(payload["noise"]), size_log_probs.to(device)


def check_molecules_of(held_out: np.ndarray, config: DistillConfig) -> np.ndarray:
    """The ``config.check_molecules`` of ``held_out`` that a distillation is judged on."""
    return np.random.default_rng(config.seed + 1).permutation(held_out)[: config.check_molecules]


def distill_checkpoint(
    source: str | Path, data: TrainingData, config: DistillConfig, output: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Distil the ELBO into the EMA density head of the training checkpoint ``source`` (trained on
    ``data``), recompute its calibration quantiles on all held-out molecules, store the importance
    proposal for later ELBOs, and write the result to ``output`` (default: in place, atomically)."""
    payload, model, noise, size_log_probs = read_frozen_model(source, data, config.device)
    if config.fresh_head and config.add_members:
        raise ValueError("--fresh-head refits the whole head; --add-members keeps it: pass one of them")
    if config.fresh_head:
        with torch.random.fork_rng(devices=[]):  # seeded without side effects, as new members are
            torch.manual_seed(config.seed)
            model = model.with_new_module(tuple(f"density.members.{index}" for index in range(model.config.density.members)),
                                          density=model.config.density).to(config.device)
    if config.atom_terms:
        model = with_atom_terms(model).to(config.device)
    stored_proposal = None
    if config.add_members:
        if not payload.get("elbo_proposal"):
            raise ValueError("adding density members keeps the stored ELBO proposal, and this checkpoint has none: "
                             "distil it once without --add-members first")
        stored_proposal = torch.tensor(payload["elbo_proposal"], dtype=torch.float32)
        # Fresh targets: other molecules, mutants and noise than any earlier member's.
        config = replace(config, seed=config.seed + model.config.density.members)
        with torch.random.fork_rng(devices=[]):  # the new members' initial weights, seeded without side effects
            torch.manual_seed(config.seed)
            model = model.with_density_members(config.add_members).to(config.device)
    held_out = held_out_rows(data)
    check = check_molecules_of(held_out, config)
    batch_of, mutant_rows = with_mutants(data, int(config.mutant_share * config.molecules), config.seed)
    log(f"{len(mutant_rows):,} single-edit mutants of training molecules added to the targets")
    real_rows = np.random.default_rng(config.seed).permutation(data.indices("train"))
    target_rows = np.concatenate([real_rows[: config.molecules - len(mutant_rows)], mutant_rows])
    report = distill_density_head(model, noise, batch_of, target_rows, check, size_log_probs, config, log,
                                  stored_proposal)
    report["mutant_targets"] = int(len(mutant_rows))
    payload["calibration"] = held_out_calibration(model, noise, data, config.device)
    payload["ema"] = model.cpu().state_dict()
    payload["model_config"] = model.config.to_dict()
    payload["meta"]["parameters"] = model.num_parameters()
    payload["elbo_proposal"] = report["proposal"]
    if payload.get("evaluation"):  # the card's figures of the old head would pass for the new one's
        payload["evaluation"] = {key: value for key, value in payload["evaluation"].items()
                                 if key not in DENSITY_HEAD_FIGURES}
    record = {key: value for key, value in report.items() if key != "proposal"}
    if config.add_members:
        payload["meta"]["density_members"] = payload["meta"].get("density_members", []) + [record]
    else:  # every member refit together: earlier members' own records no longer describe them
        payload["meta"]["distillation"] = record
        payload["meta"].pop("density_members", None)
    save_checkpoint(payload, output or source)
    return report


def elbo_spread(model: DiScoFormer, noise: NoiseProcess, batch_of: BatchOf, rows: np.ndarray,
                size_log_probs: torch.Tensor, samples: int, proposal: torch.Tensor | None, seed: int,
                max_rows: int = MAX_ELBO_ROWS) -> float:
    """Monte-Carlo standard deviation of one ``samples``-level ELBO of the molecules ``rows`` (root mean
    over molecules), from two independent estimates of each."""
    estimates = [clean_states_and_elbo(model, noise, batch_of, rows, size_log_probs, samples, proposal,
                                       torch.Generator(device=next(model.parameters()).device).manual_seed(seed + k),
                                       max_rows)[2] for k in (0, 1)]
    return float(((estimates[0] - estimates[1]) ** 2).mean().div(2).sqrt())


def refit_elbo_proposal(
    source: str | Path, data: TrainingData, config: DistillConfig, output: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Re-estimate the importance proposal of the checkpoint ``source`` (trained on ``data``) on
    ``config.pilot_molecules`` training molecules, everything else kept, and write it to ``output``
    (default: in place, atomically). Returns the ELBO's spread on ``config.check_molecules`` held-out
    molecules at ``config.check_samples`` levels under the old proposal and the new one."""
    payload, model, noise, size_log_probs = read_frozen_model(source, data, config.device)
    model.eval()
    pilot = np.random.default_rng(config.seed).permutation(data.indices("train"))[: config.pilot_molecules]
    check = check_molecules_of(held_out_rows(data), config)
    old = torch.tensor(payload["elbo_proposal"]) if payload.get("elbo_proposal") else None
    generator = torch.Generator(device=config.device).manual_seed(config.seed)
    proposal = pilot_proposal(model, noise, data.batch, pilot, generator).cpu()
    log("importance proposal estimated; measuring the ELBO's spread under both")
    report = {"pilot_molecules": int(len(pilot)), "check_molecules": int(len(check)),
              "check_samples": config.check_samples, "seed": config.seed}
    for name, weights in (("before", old), ("after", proposal)):
        report[f"elbo_sd_{name}"] = elbo_spread(model, noise, data.batch, check, size_log_probs, config.check_samples,
                                                weights, config.seed + 2, config.elbo_rows)
    payload["elbo_proposal"] = proposal.tolist()
    payload["meta"]["elbo_proposal"] = report
    save_checkpoint(payload, output or source)
    return report

"""Training the DiScoFormer: mixed batches from one or more distributions, AdamW with warm-up and
cosine decay, gradient clipping, EMA weights, validation ELBO per epoch, atomic checkpoints every
few minutes, and a resume that continues bit-for-bit (same data order, same noise draws).
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from molgen.checkpoint import read_checkpoint, save_checkpoint, warm_start_seconds
from molgen.likelihood import elbo, log_density
from molgen.model import DiScoConfig, DiScoFormer
from molgen.noise import LogSNRSchedule, NoiseProcess
from molgen.novelty import smiles_hash
from molgen.stats import spearman
from molgen.tokenizer import Vocabulary
from molgen.training.data import TrainingData, calibration_quantiles, held_out_rows
from molgen.training.losses import LossWeights, training_losses
from molgen.transfer import transfer_weights

@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "cpu"
    max_minutes: float | None = None  # stop (with a checkpoint) after this much training time
    # Fit the cosine schedule to this much training time: at the end of every epoch from the second
    # on, ``epochs`` becomes as many as fit at that epoch's measured pace (validation included), so a
    # slow epoch (a busy machine) costs the run no more than its own time. Not after the first: it
    # also pays one-off costs (CUDA initialisation, allocator warm-up).
    schedule_minutes: float | None = None
    checkpoint_minutes: float = 5.0
    val_molecules: int = 1000
    val_samples: int = 8
    null_distribution_rate: float = 0.1
    # Batches of similar size: each window of this many batches is sorted by molecule size before it is
    # cut into batches, whose order is then shuffled. Batches are padded to their largest molecule, and
    # pair features cost N^2, so on MOSES (9 to 27 atoms) this saves about a third of the compute. 0: off.
    size_bucket_batches: int = 0
    model: dict = field(default_factory=lambda: {"d_model": 128, "d_pair": 32, "n_layers": 4, "n_heads": 8, "d_ff": 256})
    loss: dict = field(default_factory=lambda: LossWeights().to_dict())
    noise: dict = field(default_factory=lambda: NoiseProcess().to_dict())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """The config a run was trained with; one that used a retired option is refused in one sentence."""
        data = {**data, "model": dict(data.get("model", {})), "loss": dict(data.get("loss", {}))}
        for part, retired in (("model", RETIRED_MODEL_OPTIONS), ("loss", RETIRED_LOSS_OPTIONS)):
            for name, off in retired.items():
                value = data[part].pop(name, off)
                if value != off:
                    raise ValueError(f"the run was trained with {name} = {value!r}, which molgen retired: continue it "
                                     "with molgen 0.1, or start a new run from it with --init-from")
        noise = data.get("noise", {})
        if noise and noise["bonds"] != noise["atoms"]:
            raise ValueError("the run was trained with --bond-logsnr-shift, which molgen retired: continue it with "
                             "molgen 0.1, or start a new run from it with --init-from")
        return cls(**data)

    def options(self) -> dict:
        """The ``molgen train`` options that give this config (epochs as last fitted)."""
        schedule = self.noise["atoms"]
        return {
            **{name: getattr(self, name) for name in ("epochs", "batch_size", "lr", "seed", "checkpoint_minutes",
                                                      "val_molecules")},
            "size_buckets": self.size_bucket_batches,
            **{name: self.model[name] for name in ("d_model", "n_layers", "n_heads", "d_pair", "self_conditioning",
                                                   "kekule_features") if name in self.model},
            "nll_weight": self.loss["nll"], "consistency_weight": self.loss["consistency"],
            "bond_repair_share": self.loss.get("bond_repair_share", 0.0),
            "logsnr_max": schedule["logsnr_max"], "logsnr_min": schedule["logsnr_min"],
        }


# Options of earlier runs that measurements retired, with the value that means "off" (docs/notes/).
RETIRED_MODEL_OPTIONS = {"ring_features": False}
RETIRED_LOSS_OPTIONS = {"repair_share": 0.0, "repair_atoms": "hydrogen"}


def learning_rate(step: int, config: TrainConfig, total_steps: int, anchor: tuple[int, float] | None = None) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak at ``total_steps`` (``anchor``: see :func:`cosine_progress`)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = cosine_progress(step, config, total_steps, anchor)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def cosine_progress(step: int, config: TrainConfig, total_steps: int, anchor: tuple[int, float] | None) -> float:
    """How far along the cosine ``step`` is, in [0, 1]. ``anchor`` (step, progress) is where a re-fitted
    schedule picked up: from there the cosine runs on from that progress to its end at ``total_steps``,
    so changing the length mid-run never raises the rate. Without one it starts after the warm-up."""
    start_step, start_progress = anchor or (config.warmup_steps, 0.0)
    fraction = (step - start_step) / max(1, total_steps - start_step)
    return min(1.0, max(0.0, start_progress + (1.0 - start_progress) * fraction))


class Trainer:
    def __init__(self, config: TrainConfig, data: TrainingData, out_dir: str | Path):
        self.config = config
        self.data = data
        self.out_dir = Path(out_dir)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        model_config = DiScoConfig(
            num_atom_types=data.vocab.num_atom_types,
            max_atoms=data.vocab.max_atoms,
            atom_valences=tuple(int(v) for v in data.vocab.max_valences),
            bond_orders=data.vocab.bond_orders,
            num_distributions=len(data.names),
            **config.model,
        )
        self.model = DiScoFormer(model_config).to(self.device)
        self.ema = DiScoFormer(model_config).to(self.device)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99)
        )
        self.noise = NoiseProcess.from_dict(config.noise)
        self.weights = LossWeights(**config.loss)
        self.size_distributions = data.size_distributions()
        # -log p(n) of each molecule's own distribution; the null token uses the pooled p(n).
        self.size_log_probs = torch.log(torch.tensor(self.size_distributions, dtype=torch.float32) + 1e-12).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.train_rows = data.indices("train")
        # Canonical-SMILES hashes of the training set: lets generation mark samples as novel
        # without shipping the data.
        self.train_hashes = torch.tensor(
            np.unique([smiles_hash(s) for s in data.smiles[self.train_rows]]), dtype=torch.int64
        )
        self.steps_per_epoch = max(1, len(self.train_rows) // config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.schedule_anchor: tuple[int, float] | None = None  # set when --schedule-minutes re-fits the length
        self.step = 0
        self.elapsed = 0.0
        self.metrics: dict = {}
        self.calibration: dict = {}
        self.stop_requested = False
        self.initialized_from: dict | None = None
        val_rows = held_out_rows(data)
        chooser = np.random.default_rng(config.seed)
        self.val_rows = np.sort(chooser.permutation(val_rows)[: config.val_molecules])

    # --- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save(self) -> None:
        save_checkpoint(
            {
                "model_config": self.model.config.to_dict(),
                "vocab": self.data.vocab.to_dict(),
                "noise": self.noise.to_dict(),
                "distributions": list(self.data.names),
                "size_distributions": self.size_distributions,
                "calibration": self.calibration,
                "metrics": self.metrics,
                "meta": {
                    "train_config": self.config.to_dict(),
                    "data_fingerprints": self.data.fingerprints,
                    "parameters": self.model.num_parameters(),
                    "training_seconds": self.elapsed,
                    "step": self.step,
                    "epochs_done": self.step / self.steps_per_epoch,
                    "initialized_from": self.initialized_from,
                },
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "trainer": {"step": self.step, "elapsed": self.elapsed, "schedule_anchor": self.schedule_anchor},
                "generator": self.generator.get_state(),
                "train_smiles_hashes": self.train_hashes,
            },
            self.checkpoint_path,
        )

    def resume(self) -> None:
        payload = read_checkpoint(self.checkpoint_path)
        if payload["meta"]["data_fingerprints"] != self.data.fingerprints:
            raise ValueError("the checkpoint was trained on other data (fingerprints differ): cannot resume")
        theirs, ours = payload["model_config"], self.model.config.to_dict()
        differing = sorted(key for key in ours if theirs.get(key, ours[key]) != ours[key])
        if differing:
            raise ValueError(
                f"the checkpoint's model differs from this run's in {', '.join(differing)}: resume with the options "
                "it was trained with, or start from it with --init-from (a distilled checkpoint only continues so)")
        self.model.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        try:
            self.generator.set_state(payload["generator"])
        except RuntimeError:  # written on another kind of device: its RNG state does not fit this one
            self.generator.manual_seed(self.config.seed * 100_003 + self.step)
        self.step = int(payload["trainer"]["step"])
        self.elapsed = float(payload["trainer"]["elapsed"])
        anchor = payload["trainer"].get("schedule_anchor")
        self.schedule_anchor = (int(anchor[0]), float(anchor[1])) if anchor else None
        self.metrics = payload["metrics"]
        self.calibration = payload["calibration"]
        self.initialized_from = payload["meta"].get("initialized_from")

    def initialize_from(self, path: str | Path, payload: dict | None = None) -> list[str]:
        """Start from another checkpoint's EMA weights, its vocabulary mapped onto this one's (see
        :mod:`molgen.transfer`); optimizer and schedule start afresh. ``payload`` is that checkpoint
        when the caller has read it already. Returns the mapped tensors."""
        payload = payload if payload is not None else read_checkpoint(path)
        mapped = transfer_weights(
            self.model, self.data.vocab, payload["ema"], payload["model_config"], Vocabulary.from_dict(payload["vocab"]),
            list(payload["distributions"]), list(self.data.names),
        )
        self.ema.load_state_dict(self.model.state_dict())
        own = float(payload["meta"].get("training_seconds", 0.0))
        self.initialized_from = {
            "path": str(path), "step": int(payload["meta"].get("step", 0)), "training_seconds": own,
            "total_training_seconds": own + warm_start_seconds(payload["meta"].get("initialized_from") or {}),
        }
        return mapped

    # --- training ----------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = self.train_rows[torch.randperm(len(self.train_rows), generator=generator).numpy()]
        window = self.config.size_bucket_batches * self.config.batch_size
        if not window:
            return order
        sizes = self.data.sizes
        windows = [part[np.argsort(sizes[part], kind="stable")] for part in np.split(order, range(window, len(order), window))]
        batches = np.split(np.concatenate(windows), range(self.config.batch_size, len(order), self.config.batch_size))
        shuffled = torch.randperm(len(batches), generator=generator).numpy()
        return np.concatenate([batches[index] for index in shuffled])

    def train_step(self, rows: np.ndarray) -> dict[str, float]:
        batch, dist = self.data.batch(rows)
        batch, dist = batch.to(self.device), dist.to(self.device)
        drop = torch.rand(dist.shape, generator=self.generator, device=self.device) < self.config.null_distribution_rate
        dist = torch.where(drop, torch.full_like(dist, self.model.null_distribution), dist)
        lr = learning_rate(self.step, self.config, self.total_steps, self.schedule_anchor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        losses = training_losses(self.model, batch, dist, self.noise, self.size_log_probs[dist], self.weights,
                                 self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for ema_param, param in zip(self.ema.parameters(), self.model.parameters()):
                ema_param.lerp_(param, 1.0 - decay)
            for ema_buffer, buffer in zip(self.ema.buffers(), self.model.buffers()):
                ema_buffer.copy_(buffer)  # running statistics such as the density offset
        self.step += 1
        out = {name: float(value.detach()) for name, value in losses.items()}
        out.update(lr=lr, grad_norm=float(grad_norm))
        return out

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation ELBO and Spearman(D, -ELBO) of the EMA model on a fixed held-out subset, and the
        density calibration quantiles per distribution."""
        self.ema.eval()
        generator = torch.Generator(device=self.device).manual_seed(12345)
        estimates, errors, densities, dists = [], [], [], []
        for start in range(0, len(self.val_rows), 500):
            batch, dist = self.data.batch(self.val_rows[start : start + 500])
            batch, dist = batch.to(self.device), dist.to(self.device)
            estimate, stderr = elbo(
                self.ema, batch, dist, self.noise, self.size_log_probs[dist], self.config.val_samples, generator
            )
            estimates.append(estimate.cpu())
            errors.append(stderr.cpu())
            densities.append(log_density(self.ema, batch, dist, self.noise).cpu())
            dists.append(dist.cpu())
        estimate, stderr = torch.cat(estimates).numpy(), torch.cat(errors).numpy()
        density, dist = torch.cat(densities).numpy(), torch.cat(dists).numpy()
        self.calibration = calibration_quantiles(density, dist, self.data.names)
        return {
            "val_elbo_nats": float(estimate.mean()),
            "val_elbo_stderr": float(np.sqrt((stderr**2).sum()) / len(stderr)),
            "val_molecules": int(len(estimate)),
            "spearman_density_elbo": spearman(density, -estimate),
            "val_density_mean": float(density.mean()),
        }

    def fit_schedule(self, epoch_seconds: float, session_seconds: float) -> None:
        """Set ``epochs`` (and so the cosine decay) to what fits in ``schedule_minutes`` of this
        session at the pace of the epoch just done (validation included). Called at the end of each of
        the session's epochs from the second on. The cosine keeps the progress it has reached and
        spreads the rest over the new length, so the rate goes on falling whichever way the length
        moved."""
        remaining = self.config.schedule_minutes * 60 - session_seconds
        done = self.step // self.steps_per_epoch
        epochs = done + max(0, int(remaining // epoch_seconds))
        if epochs == self.config.epochs:
            return
        # During the warm-up this anchors the cosine's start at its end, as without an anchor.
        start = max(self.step, self.config.warmup_steps)
        self.schedule_anchor = (start, cosine_progress(start, self.config, self.total_steps, self.schedule_anchor))
        self.config.epochs = epochs
        self.total_steps = self.steps_per_epoch * epochs

    def request_stop(self, *_) -> None:
        self.stop_requested = True

    def fit(self, on_step: Callable[[dict], None] | None = None, on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train until ``epochs`` are done, ``max_minutes`` pass, or a stop is requested (Ctrl-C);
        always leaves a checkpoint. Returns the last metrics."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        previous_handler = signal.signal(signal.SIGINT, self.request_stop)
        last_save = time.perf_counter()
        budget = self.config.max_minutes * 60 if self.config.max_minutes else math.inf
        session_start, session_elapsed_start = time.perf_counter(), self.elapsed
        session_epochs = 0
        # Losses since the last checkpoint: each periodic save also appends them to metrics.jsonl as a
        # "progress" record, so an epoch of hours (MOSES on a CPU) still leaves a curve.
        since_save: dict[str, list[float]] = {}
        try:
            while self.step < self.total_steps and not self.stop_requested:
                epoch, position = divmod(self.step, self.steps_per_epoch)
                order = self.epoch_order(epoch)
                running: dict[str, list[float]] = {}
                epoch_start = time.perf_counter()
                for index in range(position, self.steps_per_epoch):
                    rows = order[index * self.config.batch_size : (index + 1) * self.config.batch_size]
                    values = self.train_step(rows)
                    self.elapsed = session_elapsed_start + time.perf_counter() - session_start
                    for name, value in values.items():
                        running.setdefault(name, []).append(value)
                        since_save.setdefault(name, []).append(value)
                    if on_step:
                        on_step({"step": self.step, "epoch": epoch, **values})
                    if self.stop_requested or self.elapsed - session_elapsed_start >= budget:
                        self.stop_requested = True
                        break
                    if time.perf_counter() - last_save >= self.config.checkpoint_minutes * 60:
                        self.log_progress(since_save, time.perf_counter() - last_save)
                        self.save()
                        last_save = time.perf_counter()
                if self.stop_requested and self.step % self.steps_per_epoch:
                    break  # an interrupted epoch: no validation, the checkpoint below resumes it
                seconds = time.perf_counter() - epoch_start
                validation = self.validate()
                session_epochs += 1
                if self.config.schedule_minutes and session_epochs >= 2:
                    now = time.perf_counter()
                    self.fit_schedule(now - epoch_start, now - session_start)
                since_save.clear()  # the epoch's record below covers them
                record = {
                    "kind": "epoch",
                    "epoch": epoch + 1,
                    "epochs": self.config.epochs,
                    "step": self.step,
                    **{f"train_{name}": float(np.mean(values)) for name, values in running.items()},
                    "molecules_per_second": len(running.get("total", [])) * self.config.batch_size / seconds,
                    "elapsed_seconds": self.elapsed,
                    **validation,
                }
                self.metrics = record
                with open(self.out_dir / "metrics.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if on_epoch:
                    on_epoch(record)
                self.save()
                last_save = time.perf_counter()
        finally:
            signal.signal(signal.SIGINT, previous_handler)
        self.log_progress(since_save, time.perf_counter() - last_save)
        self.save()
        return self.metrics

    def log_progress(self, values: dict[str, list[float]], seconds: float) -> None:
        """Append the mean losses of the steps in ``values`` (then empty it) to metrics.jsonl."""
        steps = len(values.get("total", []))
        if not steps:
            return
        record = {"kind": "progress", "epoch": self.step / self.steps_per_epoch, "step": self.step,
                  **{f"train_{name}": float(np.mean(series)) for name, series in values.items()},
                  "molecules_per_second": steps * self.config.batch_size / max(seconds, 1e-9),
                  "elapsed_seconds": self.elapsed}
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        values.clear()


def noise_config(logsnr_max: float, logsnr_min: float) -> dict:
    """Noise schedules as plain values, the same for atoms and bonds."""
    return NoiseProcess(LogSNRSchedule(logsnr_max, logsnr_min), LogSNRSchedule(logsnr_max, logsnr_min)).to_dict()

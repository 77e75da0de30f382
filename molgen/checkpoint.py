"""Checkpoints: state dicts plus a config of plain values, written atomically, loaded with
``torch.load(weights_only=True)`` onto the CPU whatever device wrote them (docs/design.md, section 6).

Each file carries a SHA-256 digest of everything in it (``content_digest``), checked at load: a
file damaged after it was written (flipped bytes inside a tensor load silently otherwise) is
refused with one sentence, as are empty, truncated and foreign files.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from molgen.model import DiScoConfig, DiScoFormer, upgrade_state_dict
from molgen.model.features import derived_atom_features
from molgen.noise import NoiseProcess
from molgen.tokenizer import Vocabulary

FORMAT = "molgen-discoformer-1"
WEIGHTS = Path(__file__).resolve().parent / "weights"  # the models that ship with molgen, by file stem
BUNDLED = WEIGHTS / "qm9.pt"  # the default model
DIGEST_KEY = "content_digest"
ADAPTER_FORMAT = "molgen-adapter-1"
BUNDLED_NAME = "bundled"  # an adapter file's base_name when it extends the bundled model
# What inference needs; the rest of a training checkpoint (optimizer, raw weights, RNG) is dropped.
INFERENCE_KEYS = ("model_config", "vocab", "noise", "distributions", "size_distributions", "calibration",
                  "metrics", "meta", "train_smiles_hashes", "elbo_proposal", "evaluation")


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint; the message is one sentence for the user."""


def content_digest(payload: dict) -> str:
    """SHA-256 over every value of ``payload`` but the digest itself: tensors by dtype, shape and
    bytes, plain values by their repr (exact for floats), dict keys in sorted order."""
    digest = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, dict):
            keys = sorted((key for key in value if key != DIGEST_KEY), key=str)
            digest.update(f"dict {len(keys)};".encode())
            for key in keys:
                digest.update(f"{key!r}:".encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"list {len(value)};".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{type(value).__name__} {value!r};".encode())

    feed(payload)
    return digest.hexdigest()


def save_checkpoint(payload: dict, path: str | os.PathLike, kind: str = FORMAT) -> None:
    """Write ``payload`` to ``path`` atomically, with its :func:`content_digest`: a crash mid-write
    leaves the previous file intact. ``kind`` tags the file so that one model's reader refuses
    another model's checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "format": kind}
    payload[DIGEST_KEY] = content_digest(payload)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as handle:
        torch.save(payload, handle)
    os.replace(handle.name, path)


def warm_start_seconds(initialized_from: dict) -> float:
    """All the training behind a checkpoint's ``meta["initialized_from"]`` record: the source's own
    time and that of the warm starts before it (records written before chains were counted hold
    only the source's own)."""
    return float(initialized_from.get("total_training_seconds", initialized_from.get("training_seconds", 0.0)))


def read_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] = FORMAT) -> dict:
    """The payload of a checkpoint of ``kind`` (or of any of several kinds); :class:`CheckpointError`
    (one sentence) for a file that is empty, truncated, foreign, unsafe to unpickle or damaged after it
    was written."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose index sits at the end
        raise CheckpointError(f"{path} is not a checkpoint: not a PyTorch file, or truncated ({size:,} bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a Python object: never suggest loading it anyway
        raise CheckpointError(f"{path} holds Python objects besides plain values and tensors: not a molgen "
                              "checkpoint, and not safe to load") from None
    except Exception as error:  # torch raises several types for damaged archives
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is damaged: PyTorch could not read it ({first_line})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    kinds = (kind,) if isinstance(kind, str) else kind
    if found not in kinds:
        raise CheckpointError(f"{path} is not a {' or '.join(kinds)} checkpoint (format {found!r})")
    if DIGEST_KEY in payload and payload[DIGEST_KEY] != content_digest(payload):
        raise CheckpointError(f"{path} is damaged: its contents no longer match the digest written with them; "
                              "use another copy")
    return upgraded(payload, path) if found == FORMAT else payload


def upgraded(payload: dict, path: Path) -> dict:
    """A DiScoFormer payload of any molgen version in today's layout: state-dict keys renamed, the model
    config nested; a model built with a retired option is refused in one sentence."""
    try:
        if "model_config" in payload:
            if "bounded" not in payload["model_config"].get("density", {}):
                # Written before the head was bounded: its calibration quantiles get the same monotone
                # bound. Percentiles below the top quantile interval do not move (the bundled model's
                # 99th percentile is -12.4 nats, where the bound shifts D by 4e-6); above it they are
                # read on the bounded scale.
                payload["calibration"] = {name: bounded_density(quantiles).tolist()
                                          for name, quantiles in payload.get("calibration", {}).items()}
            payload["model_config"] = DiScoConfig.from_dict(payload["model_config"]).to_dict()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    for weights in ("model", "ema"):
        if weights in payload:
            payload[weights] = upgrade_state_dict(payload[weights])
    return payload


def bounded_density(values) -> np.ndarray:
    """-softplus(-x), the density head's bound (:class:`molgen.model.config.DensityConfig`), in float64."""
    values = np.asarray(values, dtype=np.float64)
    return -np.logaddexp(0.0, -values)


@dataclass
class LoadedModel:
    """A model ready for inference plus everything needed to use it."""

    model: DiScoFormer
    vocab: Vocabulary
    noise: NoiseProcess
    distributions: list[str]
    size_distributions: list[list[float]]  # per distribution, then the null (all data) one
    calibration: dict  # distribution name -> density quantiles on held-out molecules
    metrics: dict
    meta: dict
    train_hashes: np.ndarray | None  # sorted canonical-SMILES hashes of the training set
    elbo_proposal: torch.Tensor | None = None  # importance weights of time bins for the ELBO
    evaluation: dict | None = None  # headline figures of `molgen evaluate`, stored at export
    digest: str | None = None  # the content digest checked at load (None: written before digests)


def export_inference(
    source: str | os.PathLike, target: str | os.PathLike, half: bool = False, evaluation: dict | None = None
) -> dict:
    """Write the inference part of a training checkpoint (EMA weights, optionally float16), with
    ``evaluation`` (plain values) as its benchmark card when given."""
    payload = read_checkpoint(source)
    weights = {k: v.half() if half and v.is_floating_point() else v for k, v in payload["ema"].items()}
    slim = {key: payload[key] for key in INFERENCE_KEYS if key in payload}
    if evaluation is not None:
        slim["evaluation"] = evaluation
    save_checkpoint({**slim, "ema": weights}, target)
    return slim


def bundled_models() -> dict[str, Path]:
    """The models that ship with molgen, by name: ``qm9`` (the default) and ``qm9_moses``."""
    return {path.stem: path for path in sorted(WEIGHTS.glob("*.pt"))}


def model_path(path: str | os.PathLike | None = None, distribution: str | None = None) -> Path:
    """The checkpoint file to read: ``path`` itself, or the bundled model it names when no such file
    exists (``qm9``, ``qm9_moses``); with no path the bundled QM9 model, unless ``distribution`` is
    one that only another bundled model has (``moses``: the drug-like ``qm9_moses``)."""
    if path is not None:
        path = Path(path)
        return bundled_models().get(str(path), path) if not path.exists() else path
    if distribution is None:
        return BUNDLED
    # Else BUNDLED, whose own message then names the distributions it has.
    return bundled_model_with(distribution) or BUNDLED


def bundled_model_with(distribution: str) -> Path | None:
    """The bundled model that has ``distribution`` (the default one first), None when none has."""
    for candidate in dict.fromkeys((BUNDLED, *bundled_models().values())):
        if distribution in read_checkpoint(candidate, FORMAT)["distributions"]:
            return candidate
    return None


def load_model(
    path: str | os.PathLike | None = None, weights: str = "ema", device: str | torch.device = "cpu",
    base: str | os.PathLike | None = None,
) -> LoadedModel:
    """The model of a checkpoint (a file, or a bundled model's name; the bundled QM9 model when
    ``path`` is None), with its EMA weights by default, as float32 in eval mode on ``device``. An
    adapter file (`molgen adapt`) loads as its base extended by its distribution: the base is
    ``base``, else the bundled model or the path it was adapted from, and must be the very model it
    was adapted from (content digest)."""
    path = model_path(path)
    payload = read_checkpoint(path, (FORMAT, ADAPTER_FORMAT))
    if payload["format"] == ADAPTER_FORMAT:
        from molgen.training.adapt import adapted_model  # the adapter's code needs this module

        loaded = adapted_model(load_model(base or adapter_base(payload, path), weights), payload, str(path))
        loaded.model.to(device)
        return loaded
    model = DiScoFormer(DiScoConfig.from_dict(payload["model_config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload[weights].items()})
    model.eval().to(device)
    return LoadedModel(
        model=model,
        vocab=Vocabulary.from_dict(payload["vocab"]),
        noise=NoiseProcess.from_dict(payload["noise"]),
        distributions=list(payload["distributions"]),
        size_distributions=payload["size_distributions"],
        calibration=payload.get("calibration", {}),
        metrics=payload.get("metrics", {}),
        meta=payload.get("meta", {}),
        train_hashes=payload["train_smiles_hashes"].numpy() if "train_smiles_hashes" in payload else None,
        elbo_proposal=torch.tensor(payload["elbo_proposal"]) if payload.get("elbo_proposal") else None,
        evaluation=payload.get("evaluation"),
        digest=payload.get(DIGEST_KEY),
    )


def adapter_base(payload: dict, path: Path) -> Path:
    """Where the base of an adapter file is: the bundled model, the path it was adapted from (as given,
    or beside the adapter file), or the bundled model of that name."""
    name = payload["base_name"]
    if name == BUNDLED_NAME:
        return BUNDLED
    for candidate in (Path(name), path.parent / Path(name).name):
        if candidate.is_file():
            return candidate
    if name in bundled_models():  # adapted from a bundled model given by name (--base qm9_moses)
        return bundled_models()[name]
    raise CheckpointError(f"{path} was adapted from {name}, which is not here: give its base model (--base)")


# Card figures that measure the density head: a refit of the head (molgen distill) makes them stale.
DENSITY_HEAD_FIGURES = ("spearman_density_elbo", "spearman_density_elbo_pooled", "spearman_density_elbo_corrected",
                        "spearman_density_elbo_corrected_interval", "auroc_vs_mutants",
                        "share_below_5th_percentile_test")


@dataclass
class ModelCard:
    """What a checkpoint says about itself, as plain values: read from it by :meth:`of`, shown as
    (label, text) rows by :meth:`rows` (``molgen info``), as a dict by ``asdict``."""

    name: str
    distributions: list[str]
    vocabulary: str
    parameters: int
    architecture: str
    data_fingerprints: list[str]
    training: dict  # seconds, device, epochs, step
    initialized_from: dict | None  # a warm start's own training, not counted in ``training``
    has_train_hashes: bool
    digest: str | None
    last_epoch: dict  # validation figures of the last epoch
    distillation: dict | None
    density_members: list[dict]  # fits of members added after the distillation
    near_miss: dict | None  # the fit of the density head's near-miss term (molgen fit-near-miss)
    elbo_proposal: dict | None
    repair: dict | None
    property_head: dict | None  # the fit of the property head that guidance follows (molgen fit-properties)
    adapter: dict | None  # an adapter file's card (molgen adapt): its set, training and held-out figures
    evaluation: dict  # headline figures of `molgen evaluate`, stored at export

    @classmethod
    def of(cls, loaded: LoadedModel, name: str) -> "ModelCard":
        meta, config = loaded.meta, loaded.model.config
        derived = ", ".join(feature for feature, _ in derived_atom_features(config))
        density = config.density
        architecture = (
            f"{config.n_layers} layers, d_model {config.d_model}, d_pair {config.d_pair}, "
            + (f"self-conditioning with {derived} features" if config.self_conditioning else "no self-conditioning")
            + f"; density head on {'[CLS] plus per-atom terms' if density.atom_terms else '[CLS]'}"
            + (f", mean of {density.members} members" if density.members > 1 else ""))
        # A distillation replaced the density head after the last epoch: that epoch's Spearman was another head's.
        stale = {"spearman_density_elbo"} if meta.get("distillation") else set()
        return cls(
            name=name,
            distributions=list(loaded.distributions),
            vocabulary=f"{', '.join(loaded.vocab.labels)}; bonds {', '.join(loaded.vocab.bond_types[1:])}; "
                       f"up to {loaded.vocab.max_atoms} heavy atoms",
            parameters=int(meta.get("parameters", loaded.model.num_parameters())),
            architecture=architecture,
            data_fingerprints=list(meta.get("data_fingerprints", [])),
            training={"seconds": meta.get("training_seconds", 0), "device": meta.get("train_config", {}).get("device", "cpu"),
                      "epochs": meta.get("epochs_done", 0), "step": meta.get("step", 0)},
            initialized_from=meta.get("initialized_from"),
            has_train_hashes=loaded.train_hashes is not None,
            digest=loaded.digest,
            last_epoch={key: loaded.metrics[key] for key in ("val_elbo_nats", "val_elbo_stderr", "spearman_density_elbo",
                                                             "val_molecules") if key in loaded.metrics and key not in stale},
            distillation=meta.get("distillation"),
            density_members=list(meta.get("density_members", [])),
            near_miss=meta.get("near_miss"),
            elbo_proposal=meta.get("elbo_proposal"),
            repair=meta.get("repair"),
            property_head=meta.get("property_head"),
            adapter=meta.get("adapter"),
            evaluation=dict(loaded.evaluation or {}),
        )

    def rows(self) -> list[tuple[str, str]]:
        training = self.training
        rows = [
            ("distributions", ", ".join(self.distributions)),
            ("vocabulary", self.vocabulary),
            ("parameters", f"{self.parameters:,}"),
            ("architecture", self.architecture),
            ("data fingerprints", ", ".join(self.data_fingerprints)),
            ("training", f"{training['seconds'] / 60:.0f} min on {training['device']}, {training['epochs']:.1f} epochs, "
                         f"step {training['step']:,}"),
        ]
        if self.initialized_from:
            start = self.initialized_from
            rows.append(("initialized from", f"{Path(start['path']).name}: {start['training_seconds'] / 60:.0f} min, "
                         f"step {start['step']:,}; {warm_start_seconds(start) / 60:.0f} min with its own warm starts "
                         "(not counted above)"))
        rows += [
            ("training set hashes", "yes (novelty)" if self.has_train_hashes else "no"),
            ("content digest", f"sha256 {self.digest} (checked at load)" if self.digest
             else "none (written before checkpoints carried one: not checked)"),
        ]
        rows += [(f"last epoch: {key}", f"{value:.3f}" if isinstance(value, float) else str(value))
                 for key, value in self.last_epoch.items()]
        if self.distillation:
            fit = self.distillation
            rows.append(("distillation: Spearman(D, ELBO)",
                         f"{fit['spearman_density_elbo_before']:.3f} -> {fit['spearman_density_elbo_after']:.3f} on "
                         f"{fit['check_molecules']} held-out molecules"))
            targets = fit.get("config", {})
            if "molecules" in targets:
                rows.append(("distillation: targets", f"{targets['molecules']:,} x {targets['elbo_samples']} levels, "
                             f"{targets['epochs']} passes on {targets.get('device', 'cpu')}"))
        for added in self.density_members:
            fit = added["config"]
            rows.append((member_numbers(added["members"]),
                         f"{fit['molecules']:,} x {fit['elbo_samples']} levels on {fit.get('device', 'cpu')}; "
                         f"Spearman(D, ELBO) {added['spearman_density_elbo_before']:.3f} -> "
                         f"{added['spearman_density_elbo_after']:.3f} on {added['check_molecules']} held-out molecules "
                         f"({'the member' if len(added['members']) == 1 else 'their mean'} alone: "
                         f"{added['spearman_new_members']:.3f})"))
        if self.near_miss:
            fit = self.near_miss
            rows.append(("density: near-miss term",
                         f"{fit['positives']:,} training molecules against {fit['negatives']:,} single-edit mutants, "
                         f"{fit['epochs']} epochs; AUROC of D against mutants of {fit['check_molecules']:,} held-out "
                         f"molecules {fit['auroc_vs_mutants_before']:.3f} -> {fit['auroc_vs_mutants_after']:.3f}"))
        if self.elbo_proposal:
            proposal = self.elbo_proposal
            rows.append(("ELBO importance proposal", f"re-estimated on {proposal['pilot_molecules']:,} training "
                         f"molecules; {proposal['check_samples']}-level ELBO of {proposal['check_molecules']:,} held-out "
                         f"molecules varies by {proposal['elbo_sd_before']:.2f} -> {proposal['elbo_sd_after']:.2f} nats (SD)"))
        if self.repair:
            fit = self.repair["config"]
            pair_side = f" (pair side {fit['pair_width']})" if fit.get("pair_width") else ""
            rows.append(("repair adapter", f"width {fit['width']}{pair_side}, acts at log-SNR >= {fit['min_logsnr']:g} "
                         f"while the estimate is no molecule; {fit['steps']:,} steps; mends "
                         f"{100 * self.repair['mended_after']:.1f}% of such held-out estimates "
                         f"({100 * self.repair['mended_before']:.1f}% without it)"))
            own = self.repair.get("own_chains")
            if own:
                rows.append(("repair adapter: own chains",
                             f"{own['gated_states']:,} gated states of {own['chains']:,} chains, {fit['chain_steps']:,} "
                             f"steps; raw validity {100 * own['raw_validity_before']:.1f}% -> "
                             f"{100 * own['raw_validity_after']:.1f}% on {own['check_chains']:,} fresh chains"))
        if self.property_head:
            fit, held_out = self.property_head, self.property_head["held_out"]
            clean = ", ".join(f"{name} {figures['r2'][0]:.2f}" for name, figures in held_out["properties"].items())
            rows.append(("property head (guidance)", f"{fit['steps']:,} steps on {fit['train_molecules']:,} training "
                         f"molecules; held-out R^2 of clean molecules: {clean}"))
        if self.adapter:
            card = self.adapter
            molecules = card["molecules"]
            statuses = ", ".join(f"{count:,} {status}" for status, count in molecules["statuses"].items())
            rows.append((f"adapter: {card['name']}", f"extends {card['base']['name']} (digest "
                         f"{card['base']['digest'][:12]}…); set: {statuses}; trained on {molecules['train']:,} for "
                         f"{card['steps']:,} steps ({card['training_seconds'] / 60:.1f} min), rank {card['config']['rank']}"))
            rows += [(f"adapter: held-out NLL, {label}", f"{figures['nll_nats']:.2f} ± {figures['nll_stderr']:.2f} nats")
                     for label, figures in card["held_out"].items()]
            if card.get("density_term"):
                fit = card["density_term"]
                rows.append(("adapter: density term", f"fit on {fit['molecules']:,} ELBOs ({fit.get('epochs_kept', '?')} "
                             f"epochs kept); held-out Spearman(D, ELBO) "
                             f"{fit['spearman_density_elbo_before']:.3f} -> {fit['spearman_density_elbo_after']:.3f}"))
        for label, value in self.evaluation.items():
            if isinstance(value, list):  # an interval
                value = " to ".join(f"{bound:.4g}" for bound in value)
            rows.append((f"evaluate: {label}", f"{value:.4g}" if isinstance(value, float) else str(value)))
        return rows


def member_numbers(members: list[int]) -> str:
    """Density members by their 1-based numbers: "density member 2", "density members 3-5"."""
    numbers = [member + 1 for member in members]
    if len(numbers) == 1:
        return f"density member {numbers[0]}"
    return f"density members {numbers[0]}-{numbers[-1]}"

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

from molgen.model import DiScoConfig, DiScoFormer
from molgen.noise import NoiseProcess
from molgen.tokenizer import Vocabulary

FORMAT = "molgen-discoformer-1"
BUNDLED = Path(__file__).resolve().parent / "weights" / "qm9.pt"
DIGEST_KEY = "content_digest"
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


def read_checkpoint(path: str | os.PathLike, kind: str = FORMAT) -> dict:
    """The payload of a checkpoint of ``kind``; :class:`CheckpointError` (one sentence) for a file that
    is empty, truncated, foreign, unsafe to unpickle or damaged after it was written."""
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
    if found != kind:
        raise CheckpointError(f"{path} is not a {kind} checkpoint (format {found!r})")
    if DIGEST_KEY in payload and payload[DIGEST_KEY] != content_digest(payload):
        raise CheckpointError(f"{path} is damaged: its contents no longer match the digest written with them; "
                              "use another copy")
    return payload


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


def load_model(
    path: str | os.PathLike | None = None, weights: str = "ema", device: str | torch.device = "cpu"
) -> LoadedModel:
    """The model of a checkpoint (the bundled QM9 model when ``path`` is None), with its EMA weights
    by default, as float32 in eval mode on ``device``."""
    payload = read_checkpoint(BUNDLED if path is None else path)
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

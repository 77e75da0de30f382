"""Checkpoints: state dicts plus a config of plain values, written atomically, loaded with
``torch.load(weights_only=True)`` onto the CPU whatever device wrote them (DESIGN section 6)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from molgen.model import DiScoConfig, DiScoFormer
from molgen.noise import NoiseProcess
from molgen.tokenizer import Vocabulary

FORMAT = "molgen-discoformer-1"


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as handle:
        torch.save({"format": FORMAT, **payload}, handle)
    os.replace(handle.name, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path} is not a molgen checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a molgen checkpoint (format {payload.get('format')!r})")
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


def load_model(path: str | os.PathLike, weights: str = "ema", device: str | torch.device = "cpu") -> LoadedModel:
    """The model of a checkpoint, with its EMA weights by default, in eval mode on ``device``."""
    payload = read_checkpoint(path)
    model = DiScoFormer(DiScoConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload[weights])
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
    )

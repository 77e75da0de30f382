"""Autoregressive SMILES Transformer: the classic peer for both generation and likelihood.

A decoder-only Transformer (nanoGPT-style: token and position embeddings, pre-norm causal
self-attention blocks, a linear head) over canonical SMILES split by the usual regex (Schwaller
et al. 2019: bracket atoms, two-letter elements, ring closures as tokens). Its NLL is exact for
the string: -log P(canonical SMILES) = -sum_i log p(token_i | tokens before), ending with EOS.
Since a molecule has other SMILES spellings, that is an upper bound on the model's -log P(molecule),
the same kind of number as the DiScoFormer's ELBO.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from molgen.checkpoint import read_checkpoint, save_checkpoint
from molgen.chemistry import canonical_smiles, parse_smiles

FORMAT = "molgen-smiles-lm-1"
SMILES_TOKEN = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def tokenize(smiles: str) -> list[str] | None:
    """Regex tokens of ``smiles``; None when the tokens do not spell the whole string."""
    tokens = SMILES_TOKEN.findall(smiles)
    return tokens if "".join(tokens) == smiles else None


@dataclass
class SmilesLMConfig:
    vocab: tuple[str, ...] = ()
    max_len: int = 64  # tokens including BOS and EOS
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 512
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, values: dict) -> "SmilesLMConfig":
        return cls(**{**values, "vocab": tuple(values["vocab"])})


class SmilesLM(nn.Module):
    def __init__(self, config: SmilesLMConfig):
        super().__init__()
        self.config = config
        self.index = {token: i for i, token in enumerate(config.vocab)}
        self.token_embedding = nn.Embedding(len(config.vocab), config.d_model)
        self.position_embedding = nn.Embedding(config.max_len, config.d_model)
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.d_ff, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, len(config.vocab))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, V) for token ids (B, L)."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        hidden = self.token_embedding(tokens) + self.position_embedding(positions)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.blocks(hidden, mask=causal, is_causal=True)
        return self.head(self.norm(hidden))

    def encode(self, smiles: list[str | None]) -> tuple[torch.Tensor, np.ndarray]:
        """Padded ids (B, max_len) of BOS + canonical tokens + EOS, and which rows could be encoded
        (valid SMILES, known tokens, short enough); rows that could not are all padding."""
        ids = np.full((len(smiles), self.config.max_len), self.index[PAD], dtype=np.int64)
        ok = np.zeros(len(smiles), dtype=bool)
        for row, text in enumerate(smiles):
            mol = parse_smiles(text)
            tokens = tokenize(canonical_smiles(mol)) if mol is not None else None
            if tokens is None or len(tokens) + 2 > self.config.max_len or any(t not in self.index for t in tokens):
                continue
            sequence = [BOS, *tokens, EOS]
            ids[row, : len(sequence)] = [self.index[t] for t in sequence]
            ok[row] = True
        return torch.from_numpy(ids), ok

    def sequence_nll(self, ids: torch.Tensor) -> torch.Tensor:
        """-log P of each padded sequence (B,), in nats."""
        length = int((ids != self.index[PAD]).sum(1).max())
        ids = ids[:, :length]  # no compute on columns that are padding in every row
        logits = self(ids[:, :-1])
        targets = ids[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return (nll * (targets != self.index[PAD])).sum(1)

    @torch.no_grad()
    def nll(self, smiles: list[str | None], batch_size: int = 1024) -> np.ndarray:
        """Exact -log P(canonical SMILES) per molecule in nats; NaN where it cannot be encoded."""
        self.eval()
        ids, ok = self.encode(smiles)
        out = np.full(len(smiles), np.nan)
        rows = np.flatnonzero(ok)
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            out[part] = self.sequence_nll(ids[part]).numpy()
        return out

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch_size: int = 1000, temperature: float = 1.0) -> list[str]:
        """``n`` strings by ancestral sampling (may be invalid SMILES: validity is the model's)."""
        self.eval()
        generator = torch.Generator().manual_seed(seed)
        vocab, out = self.config.vocab, []
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            ids = torch.full((count, 1), self.index[BOS], dtype=torch.long)
            finished = torch.zeros(count, dtype=torch.bool)
            for _ in range(self.config.max_len - 1):
                logits = self(ids)[:, -1] / temperature
                logits[:, self.index[PAD]] = -math.inf
                logits[:, self.index[BOS]] = -math.inf
                following = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
                following = torch.where(finished, torch.full_like(following, self.index[PAD]), following)
                ids = torch.cat([ids, following[:, None]], dim=1)
                finished |= following == self.index[EOS]
                if finished.all():
                    break
            for row in ids[:, 1:].tolist():
                tokens = [vocab[i] for i in row]
                out.append("".join(tokens[: tokens.index(EOS)] if EOS in tokens else tokens).replace(PAD, ""))
        return out


def build_vocabulary(smiles: list[str]) -> tuple[str, ...]:
    tokens = set()
    for text in smiles:
        mol = parse_smiles(text)
        split = tokenize(canonical_smiles(mol)) if mol is not None else None
        tokens.update(split or ())
    return (PAD, BOS, EOS, *sorted(tokens))


def train_smiles_lm(
    train: list[str], val: list[str], out: str | Path, epochs: float = 10, max_minutes: float | None = None,
    batch_size: int = 256, lr: float = 1e-3, seed: int = 0, config: SmilesLMConfig | None = None,
    checkpoint_minutes: float | None = None, log=print,
) -> "SmilesLM":
    """Train with AdamW, linear warm-up and cosine decay over ``epochs`` (a fraction of one is fine
    for a large set); validate and checkpoint to ``out`` after every epoch and every
    ``checkpoint_minutes``, and resume from it, mid-epoch too, when it exists. ``max_minutes`` stops
    training at the first step past that budget. Returns the weights with the best validation NLL."""
    out = Path(out)
    torch.manual_seed(seed)
    config = config or SmilesLMConfig(vocab=build_vocabulary(train))
    model = SmilesLM(config)
    ids, ok = model.encode(train)
    ids = ids[torch.from_numpy(ok)]
    val_ids, val_ok = model.encode(val)
    val_ids = val_ids[torch.from_numpy(val_ok)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    steps_per_epoch = max(1, len(ids) // batch_size)
    total = max(1, round(steps_per_epoch * epochs))
    warmup = min(500, steps_per_epoch, total)
    state = {"step": 0, "steps_per_epoch": steps_per_epoch, "elapsed": 0.0, "best_val": math.inf, "history": []}
    best = None
    if out.is_file():
        payload = read_checkpoint(out, FORMAT)
        model.load_state_dict(payload["last"])
        optimizer.load_state_dict(payload["optimizer"])
        state, best = payload["state"], payload["model"]

    def out_of_time() -> bool:
        return max_minutes is not None and state["elapsed"] >= max_minutes * 60

    while state["step"] < total and not out_of_time():
        started = time.perf_counter()
        model.train()
        running, steps, order_of = 0.0, 0, None
        # One segment: up to the end of the epoch, the next checkpoint, or the budget.
        while state["step"] < total:
            epoch, position = divmod(state["step"], steps_per_epoch)
            if order_of != epoch:  # each epoch's order follows from the seed, so a resumed run continues it
                order, order_of = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed * 7919 + epoch)), epoch
            progress = max(0.0, (state["step"] - warmup) / max(1, total - warmup))
            scale = ((state["step"] + 1) / warmup if state["step"] < warmup
                     else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
            batch = ids[order[position * batch_size : (position + 1) * batch_size]]
            loss = model.sequence_nll(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running, steps = running + float(loss.detach()), steps + 1
            state["step"] += 1
            seconds = time.perf_counter() - started
            if (state["step"] % steps_per_epoch == 0 or max_minutes is not None
                    and state["elapsed"] + seconds >= max_minutes * 60
                    or checkpoint_minutes is not None and seconds >= checkpoint_minutes * 60):
                break
        model.eval()
        with torch.no_grad():
            val_nll = float(torch.cat([model.sequence_nll(val_ids[i : i + 1024])
                                       for i in range(0, len(val_ids), 1024)]).mean())
        state["elapsed"] += time.perf_counter() - started
        train_nll = running / steps
        epochs_done = state["step"] / steps_per_epoch
        state["history"].append({"epoch": epochs_done, "step": state["step"], "train_nll": train_nll,
                                 "val_nll": val_nll, "elapsed_seconds": state["elapsed"]})
        if val_nll < state["best_val"]:
            state["best_val"] = val_nll
            best = {k: v.clone() for k, v in model.state_dict().items()}
        log(f"epoch {epochs_done:.2f}: train NLL {train_nll:.2f}, val NLL {val_nll:.2f} nats, "
            f"{state['elapsed'] / 60:.1f} min")
        save_checkpoint({"config": config.to_dict(), "model": best, "last": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "state": state}, out, FORMAT)
    model.load_state_dict(best)
    return model.eval()


def load_smiles_lm(path: str | Path) -> SmilesLM:
    """The best-validation weights of a checkpoint written by :func:`train_smiles_lm`, on CPU."""
    payload = read_checkpoint(path, FORMAT)
    model = SmilesLM(SmilesLMConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    return model.eval()


def training_record(path: str | Path) -> dict:
    """Epochs trained (fractional), steps, training seconds and validation history of a checkpoint."""
    payload = read_checkpoint(path, FORMAT)
    state = payload["state"]
    return {"parameters": sum(v.numel() for k, v in payload["model"].items()),
            "epoch": state["step"] / state["steps_per_epoch"], **state}

"""Fitting the repair adapter of a trained model, everything else frozen.

Sampling chains settle a molecule's graph at mid noise (log-SNR about -1 to +2 on QM9), and some
settle on a graph that is no molecule: aromatic bonds without a Kekulé structure, an atom over its
valence, two fragments. Once settled the model keeps it: it denoises towards whatever graph the
state is near, and noised real molecules never showed it such a state. Training the whole model on
broken copies of molecules (``--bond-repair-share``, and a retired option for rings) mended some
rings and paid in likelihood on real ones.

The adapter (:mod:`molgen.model.repair`) is an MLP over each atom's inputs added to its
embedding, and optionally (``pair_width``) one over each pair's inputs and its two atoms' flags
added to its features, only while the previous estimate's argmax graph is no molecule and the noise
is below ``min_logsnr`` (:func:`molgen.model.repair.repair_gate`). Whenever the estimate could be a
molecule, the model computes exactly what it did, so the density head of every real molecule is
unchanged. It is fitted here on training molecules, noised at the levels where chains settle, half
of them around a broken copy (one ring atom swapped, one bond over a valence or one bridge removed)
with the real molecule as the target; the loss counts only the molecules whose first estimate opens
the gate.

Broken copies are not what the sampler makes: its failures are mostly rings of three or four
aromatic atoms and five-membered rings one hydrogen off. So the adapter is then fine-tuned on the
sampler's own chains (:func:`record_chains`): every state where the gate was open, aimed at the
chain's final graph when that is a molecule and otherwise at the most probable molecule one or two
changes from it (:func:`molgen.decode.nearest_molecule`). Chains that ended well teach it to leave
good chains alone; aiming the failures at :func:`molgen.decode.decode_constrained` instead taught it
to take aromatic rings apart (aromatic samples 11% -> 1%, FCD 0.45 -> 2.0 on 2 x 2,000 samples).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from molgen.checkpoint import read_checkpoint, save_checkpoint
from molgen.decode import argmax_graph, decode_raw, nearest_molecule
from molgen.likelihood import upper_pair_mask
from molgen.model import DiScoConfig, DiScoFormer, RepairAdapterConfig, model_denoiser, posterior_probs
from molgen.model.features import kekule_features
from molgen.model.repair import repair_gate
from molgen.noise import NoiseProcess, noised
from molgen.sampler import SamplerSettings, sample
from molgen.tokenizer import GraphBatch, Vocabulary
from molgen.training.corruptions import bond_corrupted, ring_atom_swapped
from molgen.training.data import TrainingData


@dataclass
class RepairConfig:
    width: int = 256  # hidden width of the adapter's MLP
    pair_width: int = 0  # hidden width of its pair side (0: none)
    steps: int = 5000
    batch_size: int = 192
    lr: float = 1e-3
    broken_share: float = 0.5  # share of molecules noised around a ring-broken copy, and again a bond-broken one
    min_logsnr: float = -1.5  # the gate stays shut at noisier levels, where no estimate is a molecule yet
    max_logsnr: float = 8.0  # training levels run from min_logsnr up to this
    check_molecules: int = 2000  # held-out molecules on which the mended share is measured
    # Sampler chains recorded for the fine-tune on the sampler's own states (0: none). Off by default: with
    # the window at -1.5, 40,000 chains raised run 8's raw validity 93.3% -> 96.4% but lowered uniqueness
    # 97.0% -> 96.1% (10,000 samples), under its 97% bar. The bundled adapter's late window (2.0) costs far
    # less uniqueness, but that was measured on one model only.
    chains: int = 0
    chain_steps: int = 2000
    chain_batch_size: int = 128
    chain_lr: float = 5e-4
    # Chains that end a molecule hold about four times as many gated states as the failures (of 40,000
    # bundled-model chains: ~620,000 against 141,000). This share of them is kept, its states weighted up,
    # so that the fine-tune sees chains in the proportions the sampler makes them, in less memory.
    valid_chain_share: float = 0.3
    check_chains: int = 2000  # fresh chains whose raw validity is measured before and after the fine-tune
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


ADAPTER_MODULE = "repair"  # the adapter's atom side and pair side


def with_repair_adapter(model: DiScoFormer, width: int, min_logsnr: float, pair_width: int = 0) -> DiScoFormer:
    """``model`` with a new (zero, so inactive) repair adapter of hidden ``width``, and a pair side of
    hidden ``pair_width`` (0: none)."""
    return model.with_new_module(ADAPTER_MODULE, repair=RepairAdapterConfig(width, pair_width, min_logsnr))


def noised_with_estimate(
    model: DiScoFormer, batch: GraphBatch, dist: torch.Tensor, noise: NoiseProcess, config: RepairConfig,
    swaps: torch.Tensor, generator: torch.Generator,
) -> tuple[tuple, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The batch noised at a level where the gate may open, about a broken copy for some molecules:
    the model's inputs (z_atoms, z_bonds, mask, log-SNRs, dist), its first estimate, and the rows
    whose estimate opens the gate."""
    mask = batch.mask
    a, b = model.config.num_atom_types, model.config.num_bond_types
    swapped, _ = ring_atom_swapped(model, batch, swaps, config.broken_share, generator)
    corrupted, _ = bond_corrupted(model, batch, config.broken_share, generator)
    source_atoms, source_bonds = GraphBatch(swapped, corrupted, mask).one_hot(a, b)
    # Uniform in log-SNR over the levels where the gate may open (uniform t for a linear schedule).
    top = noise.atoms.t_of_logsnr(torch.tensor(config.max_logsnr))
    bottom = noise.atoms.t_of_logsnr(torch.tensor(config.min_logsnr))
    t = top + (bottom - top) * torch.rand(mask.shape[0], generator=generator)
    z_atoms, z_bonds, _, _ = noised(source_atoms, source_bonds, mask, t, noise, generator)
    inputs = (z_atoms, z_bonds, mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist)
    with torch.no_grad():
        estimate = posterior_probs(model(*inputs), mask)
        rows = (no_molecule(model, *estimate) & (inputs[3] >= model.config.repair.min_logsnr)).nonzero().squeeze(1)
    return inputs, estimate, rows


def no_molecule(model: DiScoFormer, atom_probs: torch.Tensor, bond_probs: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether each estimate's argmax graph is no molecule (:func:`molgen.model.repair.repair_gate`)."""
    kekule = kekule_features(atom_probs, bond_probs, model.valences, model.bond_orders, model.matching_weights)
    return repair_gate(atom_probs, bond_probs, kekule, model.valences, model.bond_orders) > 0


def repair_loss(
    model: DiScoFormer, batch: GraphBatch, dist: torch.Tensor, noise: NoiseProcess, config: RepairConfig,
    swaps: torch.Tensor, generator: torch.Generator,
) -> tuple[torch.Tensor | None, int]:
    """Cross-entropy of the real molecules from the second (self-conditioned) pass, over the molecules
    whose first estimate opens the gate; and how many did (None and 0 when none did)."""
    inputs, (atoms, bonds), rows = noised_with_estimate(model, batch, dist, noise, config, swaps, generator)
    if len(rows) == 0:
        return None, 0
    output = model(*(value[rows] for value in inputs), (atoms[rows], bonds[rows]))
    return graph_cross_entropy(output, batch.atoms[rows], batch.bonds[rows], batch.mask[rows]), len(rows)


def graph_cross_entropy(output, target_atoms: torch.Tensor, target_bonds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over molecules of the cross-entropy of the target graphs (atom ids (B, N), bond ids
    (B, N, N)) under the model's output, each bond counted once."""
    atom_ce = F.cross_entropy(output.atom_logits.transpose(1, 2), target_atoms, reduction="none")
    bond_ce = F.cross_entropy(output.bond_logits.permute(0, 3, 1, 2), target_bonds, reduction="none")
    return ((atom_ce * mask).sum(1) + (bond_ce * upper_pair_mask(mask)).sum((1, 2))).mean()


@torch.no_grad()
def mended_share(model: DiScoFormer, data: TrainingData, noise: NoiseProcess, config: RepairConfig,
                 rows: np.ndarray) -> tuple[float, int]:
    """Of the molecules ``rows`` noised as in training (same draws on every call), those whose first
    estimate is no molecule: the share whose self-conditioned second estimate is one, and how many.
    The cross-entropy hardly moves while the adapter learns (it is dominated by what the noise hides),
    so this is the figure that says whether it works."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    swaps = torch.from_numpy(data.vocab.repair_swaps())
    gated = mended = 0
    for start in range(0, len(rows), config.batch_size):
        batch, dist = data.batch(rows[start : start + config.batch_size])
        inputs, (atoms, bonds), chosen = noised_with_estimate(model, batch, dist, noise, config, swaps, generator)
        if len(chosen) == 0:
            continue
        second = posterior_probs(model(*(value[chosen] for value in inputs), (atoms[chosen], bonds[chosen])),
                                 batch.mask[chosen])
        gated += len(chosen)
        mended += int((~no_molecule(model, *second)).sum())
    return mended / max(gated, 1), gated


def adapter_parameters(model: DiScoFormer) -> list[torch.nn.Parameter]:
    """The repair adapter's parameters, the only ones left trainable."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parameters = [parameter for name, parameter in model.named_parameters()
                  if name.split(".")[0] == ADAPTER_MODULE]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def train_adapter(model: DiScoFormer, lr: float, steps: int, step_loss: Callable[[], torch.Tensor | None],
                  log: Callable[[str], None], label: str) -> list[float]:
    """Adam on the repair adapter alone for ``steps`` steps of ``step_loss()`` (None: nothing to learn
    from this step); every parameter is frozen afterwards. Returns the losses."""
    optimizer = torch.optim.Adam(adapter_parameters(model), lr=lr)
    losses: list[float] = []
    for step in range(steps):
        loss = step_loss()
        if loss is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if (step + 1) % 100 == 0 and losses:
            log(f"{label}: step {step + 1}/{steps}, loss {np.mean(losses[-100:]):.3f}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return losses


def loss_tenths(losses: list[float]) -> dict:
    tenth = max(1, len(losses) // 10)
    return {"loss_first_tenth": float(np.mean(losses[:tenth])), "loss_last_tenth": float(np.mean(losses[-tenth:]))}


def fit_repair_adapter(
    model: DiScoFormer, data: TrainingData, noise: NoiseProcess, config: RepairConfig,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Fit ``model``'s repair adapter in place on ``data``'s training molecules; returns the loss of
    the first and last tenth of the steps, how many molecules per batch opened the gate, and the
    share of gated held-out estimates that the next pass makes a molecule, before and after."""
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    swaps = torch.from_numpy(data.vocab.repair_swaps())
    train = data.indices("train")
    held_out = data.indices("val") if len(data.indices("val")) else data.indices("test")
    check = np.random.default_rng(config.seed + 1).permutation(held_out)[: config.check_molecules]
    model.eval()  # no dropout to switch; eval keeps the frozen model as it samples
    mended_before, _ = mended_share(model, data, noise, config, check)
    gated = []

    def step_loss():
        batch, dist = data.batch(rng.choice(train, config.batch_size))
        loss, count = repair_loss(model, batch, dist, noise, config, swaps, generator)
        gated.append(count)
        return loss

    losses = train_adapter(model, config.lr, config.steps, step_loss, log, "repair adapter")
    mended_after, check_gated = mended_share(model, data, noise, config, check)
    return {"config": config.to_dict(), **loss_tenths(losses), "gated_per_batch": float(np.mean(gated)),
            "check_molecules": len(check), "check_gated": check_gated, "mended_before": mended_before,
            "mended_after": mended_after}


CHAINS_PER_BATCH = 500


@torch.no_grad()
def run_chains(
    model: DiScoFormer, noise: NoiseProcess, vocab: Vocabulary, size_distributions, chains: int, seed: int,
    on_gated_state: Callable | None = None,
):
    """Sample ``chains`` chains with the default sampler (the distributions taking turns by batch) and
    yield per batch: the atom masks, distribution ids, final atom and bond probabilities (numpy) and
    whether each raw graph is a molecule. ``on_gated_state(z_atoms, z_bonds, t, self_cond, gated)``
    sees every denoiser call where the gate is open for some chain (``gated``, (B,) bool)."""
    generator = torch.Generator().manual_seed(seed)
    size_probs = torch.tensor(np.asarray(size_distributions), dtype=torch.float64)
    for index, start in enumerate(range(0, chains, CHAINS_PER_BATCH)):
        count = min(CHAINS_PER_BATCH, chains - start)
        dist_index = index % len(size_probs)
        sizes = torch.multinomial(size_probs[dist_index], count, replacement=True, generator=generator)
        mask = torch.arange(vocab.max_atoms)[None, :] < sizes[:, None]
        dist = torch.full((count,), dist_index, dtype=torch.long)
        denoise = model_denoiser(model, mask, dist, noise)

        def watched(z_atoms, z_bonds, t, self_cond):
            if on_gated_state is not None and self_cond is not None:
                in_window = noise.atoms.logsnr(t) >= model.config.repair.min_logsnr
                if in_window.any():
                    gated = no_molecule(model, *self_cond) & in_window
                    if gated.any():
                        on_gated_state(z_atoms, z_bonds, t, self_cond, gated)
            return denoise(z_atoms, z_bonds, t, self_cond)

        result = sample(watched, mask, vocab.num_atom_types, vocab.num_bond_types, noise, SamplerSettings(), generator)
        atoms, bonds = result.atoms.numpy(), result.bonds.numpy()
        valid = torch.tensor([decode_raw(atoms[i, :k], bonds[i, :k, :k], vocab).valid
                              for i, k in enumerate(sizes.tolist())])
        yield mask, dist, atoms, bonds, valid


def raw_validity(model: DiScoFormer, noise: NoiseProcess, vocab: Vocabulary, size_distributions, chains: int,
                 seed: int) -> float:
    """Share of ``chains`` fresh chains whose raw graph is a molecule."""
    valid = [flags for *_, flags in run_chains(model, noise, vocab, size_distributions, chains, seed)]
    return float(torch.cat(valid).float().mean())


@dataclass
class ChainStates:
    """What :func:`record_chains` keeps. Per gated state: the model's inputs and the chain it belongs
    to, and a weight that restores the chains' proportions. Per chain: atom mask, distribution and
    target graph."""

    z_atoms: torch.Tensor
    z_bonds: torch.Tensor
    t: torch.Tensor
    prev_atoms: torch.Tensor
    prev_bonds: torch.Tensor
    chain: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor
    dist: torch.Tensor
    target_atoms: torch.Tensor
    target_bonds: torch.Tensor


def record_chains(
    model: DiScoFormer, noise: NoiseProcess, vocab: Vocabulary, size_distributions, config: RepairConfig,
    seed: int = 0, log: Callable[[str], None] = lambda message: None,
) -> tuple[ChainStates, dict]:
    """Sample ``config.chains`` chains and keep their gated states with targets: the final graph of a
    chain that ended a molecule (a ``valid_chain_share`` of them), otherwise the nearest molecule
    (:func:`molgen.decode.nearest_molecule`); a failed chain without one is left out."""
    if not 0.0 < config.valid_chain_share <= 1.0:
        raise ValueError("valid_chain_share must be in (0, 1]")
    keep_generator = torch.Generator().manual_seed(seed)
    names = ("z_atoms", "z_bonds", "t", "prev_atoms", "prev_bonds", "chain")
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    per_chain: dict[str, list[torch.Tensor]] = {name: [] for name in ("mask", "dist", "atoms", "bonds", "weight")}
    visited: list[tuple] = []
    chains = failed = without_target = 0

    def visit(z_atoms, z_bonds, t, self_cond, gated):
        visited.append((gated.clone(), z_atoms.clone(), z_bonds.clone(), t.clone(), self_cond[0].clone(),
                        self_cond[1].clone()))

    for mask, dist, atoms, bonds, valid in run_chains(model, noise, vocab, size_distributions, config.chains, seed,
                                                       visit):
        count, n_max = mask.shape
        target_atoms = torch.zeros(count, n_max, dtype=torch.long)
        target_bonds = torch.zeros(count, n_max, n_max, dtype=torch.long)
        weight = torch.zeros(count)
        keep_valid = torch.rand(count, generator=keep_generator) < config.valid_chain_share
        for i, k in enumerate(mask.sum(1).tolist()):
            if valid[i] and keep_valid[i]:
                graph, weight[i] = argmax_graph(atoms[i, :k], bonds[i, :k, :k]), 1.0 / config.valid_chain_share
            elif not valid[i]:
                failed += 1
                graph, weight[i] = nearest_molecule(atoms[i, :k], bonds[i, :k, :k], vocab), 1.0
                if graph is None:
                    without_target, weight[i] = without_target + 1, 0.0
                    continue
            else:
                continue
            target_atoms[i, :k] = torch.from_numpy(graph[0].astype(np.int64))
            target_bonds[i, :k, :k] = torch.from_numpy(graph[1].astype(np.int64))
        for gated, *values in visited:
            rows = (gated & (weight > 0)).nonzero().squeeze(1)
            for name, value in zip(names, values):
                kept[name].append(value[rows])
            kept["chain"].append(rows + chains)
        visited.clear()
        for name, value in zip(per_chain, (mask, dist, target_atoms, target_bonds, weight)):
            per_chain[name].append(value)
        chains += count
        log(f"repair adapter: {chains:,}/{config.chains:,} chains recorded, {failed:,} no molecule")
    chain_weight = torch.cat(per_chain["weight"])
    chain = torch.cat(kept["chain"])
    states = ChainStates(
        *(torch.cat(kept[name]) for name in names[:-1]), chain, chain_weight[chain],
        torch.cat(per_chain["mask"]), torch.cat(per_chain["dist"]), torch.cat(per_chain["atoms"]),
        torch.cat(per_chain["bonds"]),
    )
    return states, {"chains": chains, "chains_raw_validity": 1.0 - failed / max(chains, 1),
                    "failed_without_target": without_target, "gated_states": len(chain)}


def chain_loss(model: DiScoFormer, noise: NoiseProcess, states: ChainStates, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the chains' targets from the model's pass on their recorded states ``rows``."""
    chain = states.chain[rows]
    mask, t = states.mask[chain], states.t[rows]
    output = model(states.z_atoms[rows], states.z_bonds[rows], mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t),
                   states.dist[chain], (states.prev_atoms[rows], states.prev_bonds[rows]))
    return graph_cross_entropy(output, states.target_atoms[chain], states.target_bonds[chain], mask)


def fit_on_chains(
    model: DiScoFormer, noise: NoiseProcess, vocab: Vocabulary, size_distributions, config: RepairConfig,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Fine-tune ``model``'s repair adapter in place on its own sampler's gated states
    (:func:`record_chains`); returns what was recorded, the loss of the first and last tenth of the
    steps, and the raw validity of ``check_chains`` fresh chains (same seed) before and after.

    One round: a second one, recording 20,000 chains with the fine-tuned adapter and fine-tuning on
    them, lowered raw validity (97.1% -> 96.5% on 2 x 2,000 samples) and raised FCD (0.66 -> 1.08).
    """
    model.eval()
    check_seed = config.seed + 1
    before = raw_validity(model, noise, vocab, size_distributions, config.check_chains, check_seed)
    states, report = record_chains(model, noise, vocab, size_distributions, config, seed=config.seed + 2, log=log)
    if report["gated_states"] == 0:
        raise ValueError("no sampler state opened the repair gate: nothing to fine-tune on")
    generator = torch.Generator().manual_seed(config.seed)

    def step_loss():
        rows = torch.multinomial(states.weights, config.chain_batch_size, replacement=True, generator=generator)
        return chain_loss(model, noise, states, rows)

    losses = train_adapter(model, config.chain_lr, config.chain_steps, step_loss, log, "repair adapter on its chains")
    after = raw_validity(model, noise, vocab, size_distributions, config.check_chains, check_seed)
    return {**report, **loss_tenths(losses), "check_chains": config.check_chains, "raw_validity_before": before,
            "raw_validity_after": after}


def repair_checkpoint(
    source: str | Path, data: TrainingData, config: RepairConfig, output: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Give the checkpoint ``source`` (trained on ``data``) a repair adapter, fitted from scratch with
    the rest frozen, and write it to ``output`` (default: in place, atomically)."""
    payload = read_checkpoint(source)
    model = DiScoFormer(DiScoConfig.from_dict(payload["model_config"]))
    if not model.config.kekule_features:
        raise ValueError("the repair adapter needs a model trained with --kekule-features (its gate reads them)")
    if payload["meta"]["data_fingerprints"] != data.fingerprints:
        raise ValueError("the checkpoint was trained on other data (fingerprints differ)")
    model.load_state_dict(payload["ema"])
    with torch.random.fork_rng():  # the adapter's first layer starts random: seeded, so a run repeats
        torch.manual_seed(config.seed)
        model = with_repair_adapter(model, config.width, config.min_logsnr, config.pair_width)
    noise = NoiseProcess.from_dict(payload["noise"])
    report = fit_repair_adapter(model, data, noise, config, log)
    if config.chains:
        report["own_chains"] = fit_on_chains(model, noise, Vocabulary.from_dict(payload["vocab"]),
                                             payload["size_distributions"], config, log)
    payload["ema"] = model.state_dict()
    payload["model_config"] = model.config.to_dict()
    payload["meta"]["parameters"] = model.num_parameters()
    payload["meta"]["repair"] = report
    save_checkpoint(payload, output or source)
    return report

"""Scoring molecules a user brings: the density head's log P, where it falls among held-out molecules,
and a status per row (``ok``, ``invalid_smiles``, ``invalid_molecule``, ``out_of_domain``) with the reason.

Parsing and encoding (RDKit, the slow part) are plain functions over lists of SMILES that run in
worker processes; inference runs in the calling process on whatever device the model is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from molgen.checkpoint import LoadedModel
from molgen.chemistry import parse_smiles_with_reason
from molgen.likelihood import elbo, log_density
from molgen.tokenizer import OutOfDomain, Vocabulary, batch_from_arrays, encode

SCORE_COLUMNS = ["log_density", "density_percentile", "status", "reason"]
# Molecules below the 5th percentile of held-out molecules' density are rejected by default: a real
# molecule of the training distribution is rejected 5% of the time, the usual significance level.
DEFAULT_MIN_PERCENTILE = 5.0
# generate's density filter (thin_to_data_profile): equal percentile bins of the held-out molecules,
# thinned from the data's median up, with this many pseudo-samples per bin in the samples' shares.
PROFILE_BINS = 20
PROFILE_ABOVE = 50.0
PROFILE_PRIOR = 10.0
EXACT_COLUMNS = ["elbo_nats", "elbo_stderr"]
CALIBRATION_QUANTILES = 101  # D at the 0th, 1st, ..., 100th percentile of held-out molecules
# log_density under the scored distribution minus under a second one (``versus``, e.g. null): how much
# more typical of the distribution a molecule is than of molecules in general. A log-probability favours
# small, simple molecules whatever the distribution; the ratio cancels that, which is what tells an
# adapted series' molecules from other drug-like ones (docs/notes/adapt-drug-like.md).
RATIO_COLUMNS = ["log_ratio"]
PAIR_BUDGET = 1024 * 9 * 9  # atom pairs per model call (about 120 MOSES molecules): the fastest on a 2-core CPU


@dataclass
class EncodedChunk:
    """Statuses for every row; token arrays for the rows whose status is ``ok`` (at ``positions``)."""

    status: list[str]
    reason: list[str]
    positions: np.ndarray  # (k,) rows of the chunk that are ok
    atoms: np.ndarray  # (k, N) int8
    bonds: np.ndarray  # (k, N, N) int8
    sizes: np.ndarray  # (k,) int8


def encode_smiles(smiles: list[str | None], read_errors: list[str | None], vocab_dict: dict) -> EncodedChunk:
    """Parse and encode one chunk; picklable arguments so it can run in a worker process."""
    vocab = Vocabulary.from_dict(vocab_dict)
    status, reason, molecules = [], [], []
    for position, (text, read_error) in enumerate(zip(smiles, read_errors)):
        if read_error:
            status.append("invalid_molecule")
            reason.append(read_error)
            continue
        mol, problem = parse_smiles_with_reason(text)
        if mol is None:
            status.append("invalid_smiles")
            reason.append(problem)
            continue
        try:
            tokens = encode(mol, vocab)
        except OutOfDomain as error:
            status.append("out_of_domain")
            reason.append(str(error))
            continue
        status.append("ok")
        reason.append("")
        molecules.append((position, tokens.atoms, tokens.bonds))
    return _encoded_chunk(status, reason, molecules, vocab.max_atoms)


def _encoded_chunk(status: list[str], reason: list[str], molecules: list[tuple[int, np.ndarray, np.ndarray]],
                   n: int) -> EncodedChunk:
    """The chunk of ``molecules`` (row, atom ids (k,), bond ids (k, k)), padded to ``n`` atoms."""
    atoms = np.zeros((len(molecules), n), dtype=np.int8)
    bonds = np.zeros((len(molecules), n, n), dtype=np.int8)
    sizes = np.zeros(len(molecules), dtype=np.int8)
    for row, (_, atom_ids, bond_ids) in enumerate(molecules):
        k = len(atom_ids)
        atoms[row, :k], bonds[row, :k, :k], sizes[row] = atom_ids, bond_ids, k
    positions = np.array([position for position, _, _ in molecules], dtype=np.int64)
    return EncodedChunk(status, reason, positions, atoms, bonds, sizes)


def encode_graphs(graphs: list, vocab: Vocabulary) -> EncodedChunk:
    """Encode torch-geometric graphs of atom- and bond-type ids in ``vocab`` (as :func:`molgen.to_pyg`
    makes them) the way :func:`encode_smiles` encodes SMILES: a graph that carries a ``status`` other
    than ok keeps it, and one that does not fit the vocabulary or is not a molecular graph (a bond one
    way only, a bond to itself) gets ``invalid_molecule`` and why."""
    status, reason, molecules = [], [], []
    for position, graph in enumerate(graphs):
        given = getattr(graph, "status", "ok")
        if given != "ok":  # a row molgen.to_pyg could not encode keeps its status and reason
            status.append(given)
            reason.append(getattr(graph, "reason", ""))
            continue
        problem = _graph_problem(graph, vocab)
        if problem is not None:
            status.append("invalid_molecule")
            reason.append(problem)
            continue
        k = int(graph.num_nodes)
        bonds = np.zeros((k, k), dtype=np.int8)
        first, second = graph.edge_index.numpy()
        bonds[first, second] = graph.edge_attr.numpy()
        status.append("ok")
        reason.append("")
        molecules.append((position, graph.x.numpy(), bonds))
    return _encoded_chunk(status, reason, molecules, vocab.max_atoms)


def _graph_problem(graph, vocab: Vocabulary) -> str | None:
    """Why ``graph`` cannot be scored with ``vocab``, or None."""
    if graph.x is None or not graph.num_nodes:
        return "no atoms"
    x, edges, kinds = graph.x, graph.edge_index, graph.edge_attr
    k = int(graph.num_nodes)
    if x.dim() != 1 or len(x) != k:
        return "x must hold one atom-type id per node"
    if k > vocab.max_atoms:
        return f"{k} heavy atoms > {vocab.max_atoms}"
    if int(x.min()) < 0 or int(x.max()) >= vocab.num_atom_types:
        return f"atom-type ids must lie in 0..{vocab.num_atom_types - 1}"
    if edges is None or edges.numel() == 0:
        return None if k == 1 else f"{k} atoms and no bonds"
    if kinds is None or kinds.dim() != 1 or len(kinds) != edges.shape[1]:
        return "edge_attr must hold one bond-type id per edge"
    if int(kinds.min()) < 1 or int(kinds.max()) >= vocab.num_bond_types:
        return f"bond-type ids must lie in 1..{vocab.num_bond_types - 1}"
    if int(edges.min()) < 0 or int(edges.max()) >= k or bool((edges[0] == edges[1]).any()):
        return "edge_index must join two different atoms of the graph"
    bonds = torch.zeros(k, k, dtype=torch.long)
    bonds[edges[0], edges[1]] = kinds
    if not torch.equal(bonds, bonds.T):
        return "every bond must appear in both directions with the same type"
    return None


def passes_density(percentile, min_percentile: float) -> np.ndarray:
    """The one density rule of ``generate``, ``filter`` and the API: a percentile at or above
    ``min_percentile``. A missing percentile (a checkpoint without calibration, a row not scored)
    fails every threshold above 0 and passes 0, which asks for no density filter."""
    return (min_percentile <= 0) | (np.asarray(percentile, dtype=np.float64) >= min_percentile)


def thin_to_data_profile(percentile, seed: int, above: float = PROFILE_ABOVE, bins: int = PROFILE_BINS,
                         prior: float = PROFILE_PRIOR) -> np.ndarray:
    """Which samples the density-profile rule of ``generate`` keeps (a boolean per sample).

    The held-out molecules' percentiles are uniform by construction, so each of ``bins`` equal
    percentile bins holds 1/bins of the data. A bin at or above the ``above`` percentile that holds a
    larger share q of the samples keeps each of its samples with probability (1/bins)/q (rejection
    sampling towards the data's profile; a seeded draw, so the same seed keeps the same rows). The
    samples' shares are estimated from the samples themselves with ``prior`` pseudo-samples per bin at
    the data's share: in a run of a few hundred a bin's count is mostly noise, and the rule then thins
    little. Missing percentiles (no calibration) are kept. Why only the upper half: the sampler is
    sharper than the data and over-produces typical and memorised molecules there, and thinning them
    brings the kept set closer to the data; the lowest bin is over-filled too (failed samples), but it
    is also where the data's rare molecules lie, and thinning it moved the kept set away from the data
    (docs/notes/density-filter.md).
    """
    percentile = np.asarray(percentile, dtype=np.float64)
    scored = ~np.isnan(percentile)
    which = np.clip((np.nan_to_num(percentile) * bins / 100.0).astype(np.int64), 0, bins - 1)
    counts = np.bincount(which[scored], minlength=bins)
    share = (counts + prior) / (counts.sum() + prior * bins)
    keep_probability = np.minimum(1.0, (1.0 / bins) / share)
    keep_probability[np.arange(bins) * 100.0 / bins < above] = 1.0
    draws = np.random.default_rng(seed).random(len(percentile))
    return ~scored | (draws < keep_probability[which])


def density_percentile(values: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Percentile (0-100) of each value among the held-out molecules the quantiles summarise."""
    levels = np.linspace(0.0, 100.0, len(quantiles))
    return np.interp(values, np.asarray(quantiles), levels, left=0.0, right=100.0)


def distribution_index(loaded: LoadedModel, name: str | None) -> int:
    """Index of a training distribution by name (None: the first; 'null': the generic one)."""
    if name is None:
        return 0
    if name == "null":
        return len(loaded.distributions)
    if name not in loaded.distributions:
        raise ValueError(f"unknown distribution {name!r}; the checkpoint has: {', '.join(loaded.distributions)}, null"
                         + _bundled_hint(name))
    return loaded.distributions.index(name)


def _bundled_hint(distribution: str) -> str:
    """Which bundled model has ``distribution``, as the end of an error message ('' when none does)."""
    from molgen.checkpoint import bundled_model_with

    path = bundled_model_with(distribution)
    if path is None:
        return ""
    return f" (the bundled model {path.stem} has it: --checkpoint {path.stem}, or molgen.load({path.stem!r}))"


class Scorer:
    """Scores encoded chunks with one model, distribution and device."""

    def __init__(self, loaded: LoadedModel, distribution: str | None = None, device: str = "cpu",
                 batch_size: int = 2048, exact: bool = False, exact_samples: int = 16, seed: int = 0,
                 versus: str | None = None):
        """``versus``: also ``log_ratio``, log_density under ``distribution`` minus under this one."""
        self.loaded = loaded
        self.dist_index = distribution_index(loaded, distribution)
        self.versus_index = None if versus is None else distribution_index(loaded, versus)
        if self.versus_index == self.dist_index:
            raise ValueError(f"versus {versus!r} is the scored distribution itself: its log_ratio is 0 everywhere; "
                             "name another one (e.g. null)")
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device)
        self.batch_size = batch_size
        self.exact = exact
        self.exact_samples = exact_samples
        self.seed = seed
        name = loaded.distributions[self.dist_index] if self.dist_index < len(loaded.distributions) else None
        self.quantiles = loaded.calibration.get(name) if name else None
        sizes = torch.tensor(loaded.size_distributions[self.dist_index], dtype=torch.float32)
        self.size_log_probs = torch.log(sizes + 1e-12).to(self.device)

    @property
    def columns(self) -> list[str]:
        return SCORE_COLUMNS + (RATIO_COLUMNS if self.versus_index is not None else []) + (
            EXACT_COLUMNS if self.exact else [])

    @torch.no_grad()
    def score_encoded(self, encoded: EncodedChunk, index: pd.Index, chunk_seed: int = 0) -> pd.DataFrame:
        """Result columns for one chunk, in row order; ``chunk_seed`` fixes the ELBO's Monte Carlo."""
        count = len(encoded.status)
        density, versus_density = np.full(count, np.nan), np.full(count, np.nan)
        estimates, errors = np.full(count, np.nan), np.full(count, np.nan)
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + chunk_seed)
        # The density in batches of similar size, each padded to its largest molecule: pair features cost
        # N^2, and a drug-like chunk (9 to 27 atoms) padded to the vocabulary's 32 paid twice over.
        by_size = np.argsort(encoded.sizes, kind="stable")
        start = 0
        while start < len(by_size):
            part = by_size[start:start + self.batch_size]
            width = int(encoded.sizes[part].max())
            # At most PAIR_BUDGET atom pairs per call: larger tensors fall out of the CPU caches (2,048
            # MOSES molecules at once scored at half the rate of 256).
            part = part[:max(1, PAIR_BUDGET // width**2)]
            width = int(encoded.sizes[part].max())
            start += len(part)
            batch = batch_from_arrays(encoded.atoms[part, :width], encoded.bonds[part, :width, :width],
                                      encoded.sizes[part]).to(self.device)
            dist = torch.full((len(part),), self.dist_index, dtype=torch.long, device=self.device)
            density[encoded.positions[part]] = log_density(self.model, batch, dist, self.loaded.noise).cpu().numpy()
            if self.versus_index is not None:
                versus_density[encoded.positions[part]] = log_density(
                    self.model, batch, torch.full_like(dist, self.versus_index), self.loaded.noise).cpu().numpy()
        # The ELBO in row order: its Monte Carlo draws follow the rows, so a chunk gives the same figures
        # whatever else is in it.
        for start in range(0, len(encoded.positions) if self.exact else 0, self.batch_size):
            part = slice(start, start + self.batch_size)
            batch = batch_from_arrays(encoded.atoms[part], encoded.bonds[part], encoded.sizes[part]).to(self.device)
            dist = torch.full((batch.mask.shape[0],), self.dist_index, dtype=torch.long, device=self.device)
            estimate, stderr = elbo(self.model, batch, dist, self.loaded.noise, self.size_log_probs,
                                    self.exact_samples, generator, proposal=self.loaded.elbo_proposal)
            estimates[encoded.positions[part]] = -estimate.cpu().numpy()  # log P lower bound, in nats
            errors[encoded.positions[part]] = stderr.cpu().numpy()
        result = pd.DataFrame({"log_density": density}, index=index)
        result["density_percentile"] = (
            density_percentile(density, self.quantiles) if self.quantiles else np.nan
        )
        result.loc[np.isnan(density), "density_percentile"] = np.nan
        result["status"] = encoded.status
        result["reason"] = encoded.reason
        if self.versus_index is not None:
            result["log_ratio"] = density - versus_density
        if self.exact:
            result["elbo_nats"] = estimates
            result["elbo_stderr"] = errors
        return result

    def score_smiles(self, smiles: list[str | None], index: pd.Index | None = None) -> pd.DataFrame:
        encoded = encode_smiles(smiles, [None] * len(smiles), self.loaded.vocab.to_dict())
        return self.score_encoded(encoded, index if index is not None else pd.RangeIndex(len(smiles)))

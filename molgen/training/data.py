"""Training data: prepared sets on one vocabulary, each molecule tagged with its distribution; the
held-out rows, single-edit mutants for density targets, and the density calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from molgen.data import PreparedDataset
from molgen.mutants import single_edit_mutants
from molgen.scoring import CALIBRATION_QUANTILES, encode_smiles
from molgen.pyg import MoleculeGraphs
from molgen.tokenizer import GraphBatch, Vocabulary

BatchOf = Callable[[np.ndarray], tuple[GraphBatch, torch.Tensor]]


@dataclass
class TrainingData:
    """Several prepared datasets on one vocabulary, each molecule tagged with its distribution id."""

    vocab: Vocabulary
    names: list[str]
    graphs: MoleculeGraphs
    dist: np.ndarray
    split: np.ndarray
    smiles: np.ndarray  # canonical SMILES per molecule
    fingerprints: list[str]

    @classmethod
    def combine(cls, datasets: list[PreparedDataset], names: list[str], max_atoms: int | None = None) -> "TrainingData":
        """One vocabulary over ``datasets`` (the first one's atom types first, ids remapped), with room
        for ``max_atoms`` heavy atoms or the largest molecule of any of them."""
        atom_types: list = []
        for dataset in datasets:
            atom_types += [key for key in dataset.vocab.atom_types if key not in atom_types]
        n = max([d.vocab.max_atoms for d in datasets] + [max_atoms or 0])
        bond_types = {d.vocab.bond_types for d in datasets}
        if len(bond_types) > 1:
            raise ValueError("training sets must all be prepared with the same bond types (--aromatic-bonds or not)")
        vocab = Vocabulary(tuple(atom_types), n, bond_types.pop())
        remaps = [np.array([vocab.index(key) for key in dataset.vocab.atom_types], dtype=np.int8) for dataset in datasets]
        return cls(
            vocab, names, graphs=MoleculeGraphs.concat([dataset.graphs for dataset in datasets], remaps),
            dist=np.concatenate([np.full(len(dataset), index, dtype=np.int64) for index, dataset in enumerate(datasets)]),
            split=np.concatenate([dataset.split for dataset in datasets]),
            smiles=np.concatenate([dataset.smiles for dataset in datasets]),
            fingerprints=[dataset.fingerprint for dataset in datasets],
        )

    @property
    def sizes(self) -> np.ndarray:
        return self.graphs.sizes

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == ("train", "val", "test").index(split))

    def batch(self, indices: np.ndarray) -> tuple[GraphBatch, torch.Tensor]:
        """The molecules at ``indices``, padded to the largest among them, and their distribution ids."""
        return self.graphs.dense(indices), torch.from_numpy(self.dist[indices])

    def size_distributions(self) -> list[list[float]]:
        """p(n) on the training split for each distribution, then for all of them (the null one)."""
        train = self.indices("train")
        groups = [train[self.dist[train] == d] for d in range(len(self.names))] + [train]
        out = []
        for rows in groups:
            counts = np.bincount(self.sizes[rows], minlength=self.vocab.max_atoms + 1).astype(np.float64)
            out.append((counts / max(counts.sum(), 1.0)).tolist())
        return out


def held_out_rows(data: TrainingData) -> np.ndarray:
    """The validation molecules, or the test ones where there are none."""
    return data.indices("val") if len(data.indices("val")) else data.indices("test")


def calibration_quantiles(density: np.ndarray, dist: np.ndarray, names: list[str]) -> dict[str, list[float]]:
    """Per distribution (by name) the density quantiles of its held-out molecules: ``density`` and the
    distribution ids ``dist`` of those molecules. What ``density_percentile`` is read against."""
    levels = np.linspace(0, 1, CALIBRATION_QUANTILES)
    return {name: np.quantile(density[dist == index], levels).tolist()
            for index, name in enumerate(names) if (dist == index).any()}


def with_mutants(data: TrainingData, count: int, seed: int,
                 parent_rows: np.ndarray | None = None) -> tuple[BatchOf, np.ndarray]:
    """A batch source over ``data`` plus up to ``count`` single-edit mutants of molecules of
    ``parent_rows`` (default: the training molecules), each tagged with its parent's distribution and in
    none of ``data``'s splits, and the rows of the mutants in it. They show the density head molecules
    just off the data, where users' candidates often lie."""
    rng = np.random.default_rng(seed)
    pool = data.indices("train") if parent_rows is None else np.asarray(parent_rows)
    parents = np.array([], dtype=np.int64)
    if count and len(pool):
        # Up to twice as many parents as mutants (some edits all fail). Asked for more mutants than the
        # pool has molecules, each parent comes back in a fresh order for another edit (the mutants stay
        # distinct).
        rounds = 1 if count <= len(pool) else -(-2 * count // len(pool))
        parents = np.concatenate([rng.permutation(pool) for _ in range(rounds)])[: 2 * count]
    elements = tuple(sorted({key[0] for key in data.vocab.atom_types if key[1] == 0}))
    found = single_edit_mutants([str(s) for s in data.smiles[parents]], set(map(str, data.smiles)), seed=seed,
                                elements=elements, max_atoms=data.vocab.max_atoms)
    keep = [(row, mutant.smiles) for row, mutant in zip(parents, found) if mutant is not None]
    encoded = encode_smiles([smiles for _, smiles in keep], [None] * len(keep), data.vocab.to_dict())
    chosen = encoded.positions[:count]
    mutants = MoleculeGraphs.from_dense(encoded.atoms[:count], encoded.bonds[:count], encoded.sizes[:count])
    graphs = MoleculeGraphs.concat([data.graphs, mutants])
    dist = np.concatenate([data.dist, data.dist[[keep[i][0] for i in chosen]]]).astype(np.int64)

    def batch_of(rows: np.ndarray) -> tuple[GraphBatch, torch.Tensor]:
        return graphs.dense(rows), torch.from_numpy(dist[rows])

    return batch_of, len(data.sizes) + np.arange(len(chosen))

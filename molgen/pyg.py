"""Molecules as torch-geometric graphs: how prepared sets are stored, and the bridge to PyG users.

One molecule is ``Data(x=atom-type ids (n,), edge_index=(2, 2m), edge_attr=bond-type ids (2m,))``,
each bond in both directions, as PyG's message passing expects. A prepared set keeps all of them
collated the way ``InMemoryDataset`` does (one tensor per field plus per-molecule offsets), with node
indices local to each molecule and stored narrow (int8 types, int16 indices): about 5 bytes per atom
and bond instead of the N x N bond matrix a dense set pays per molecule (1 KB at N = 32). The model's
dense tokens and pair channels are built per batch with :func:`torch_geometric.utils.to_dense_batch`
and :func:`torch_geometric.utils.to_dense_adj`, padded to the batch's largest molecule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Data, Dataset
from torch_geometric.utils import to_dense_adj, to_dense_batch

from molgen.tokenizer import GraphBatch

ARRAYS = ("x", "edge_index", "edge_attr", "node_ptr", "edge_ptr")


class MoleculeGraphs(Dataset):
    """A collated, in-memory PyG dataset of molecules: ``graphs[i]`` is a :class:`Data`, and
    :meth:`dense` gives the model's padded batch of any rows."""

    def __init__(self, x: np.ndarray, edge_index: np.ndarray, edge_attr: np.ndarray, node_ptr: np.ndarray,
                 edge_ptr: np.ndarray):
        super().__init__()
        self.x = np.asarray(x, dtype=np.int8)  # (total atoms,) atom-type ids
        self.edge_index = np.asarray(edge_index, dtype=np.int16).reshape(2, -1)  # (2, total edges), local
        self.edge_attr = np.asarray(edge_attr, dtype=np.int8)  # (total edges,) bond-type ids
        self.node_ptr = np.asarray(node_ptr, dtype=np.int64)  # (M + 1,) where each molecule's atoms start
        self.edge_ptr = np.asarray(edge_ptr, dtype=np.int64)  # (M + 1,) where its edges start

    @classmethod
    def from_dense(cls, atoms: np.ndarray, bonds: np.ndarray, sizes: np.ndarray) -> "MoleculeGraphs":
        """From padded id arrays (M, N), (M, N, N) and sizes (M,), as scoring encodes chunks."""
        sizes = np.asarray(sizes, dtype=np.int64)
        real = np.arange(atoms.shape[1])[None, :] < sizes[:, None]
        molecule, first, second = np.nonzero(bonds)  # row-major: grouped by molecule, in order
        edge_counts = np.bincount(molecule, minlength=len(sizes))
        return cls(atoms[real], np.stack([first, second]), bonds[molecule, first, second],
                   _offsets(sizes), _offsets(edge_counts))

    @classmethod
    def from_molecules(cls, molecules: Sequence[tuple[np.ndarray, np.ndarray]]) -> "MoleculeGraphs":
        """From (atom ids (n,), bond ids (n, n)) pairs, one per molecule."""
        if not molecules:
            return cls.empty()
        edges = [np.nonzero(bonds) for _, bonds in molecules]
        return cls(
            np.concatenate([atoms for atoms, _ in molecules]),
            np.concatenate([np.stack(pair) for pair in edges], axis=1),
            np.concatenate([bonds[pair] for (_, bonds), pair in zip(molecules, edges)]),
            _offsets([len(atoms) for atoms, _ in molecules]), _offsets([len(pair[0]) for pair in edges]),
        )

    @classmethod
    def empty(cls) -> "MoleculeGraphs":
        return cls(np.zeros(0), np.zeros((2, 0)), np.zeros(0), np.zeros(1), np.zeros(1))

    @classmethod
    def concat(cls, parts: Sequence["MoleculeGraphs"], atom_maps: Sequence[np.ndarray | None] | None = None
               ) -> "MoleculeGraphs":
        """The molecules of ``parts`` in order; ``atom_maps[k]`` (old id -> new id) renumbers part k's
        atom types onto a shared vocabulary."""
        atom_maps = atom_maps or [None] * len(parts)
        xs = [part.x if mapping is None else np.asarray(mapping, dtype=np.int8)[part.x]
              for part, mapping in zip(parts, atom_maps)]
        return cls(np.concatenate(xs), np.concatenate([part.edge_index for part in parts], axis=1),
                   np.concatenate([part.edge_attr for part in parts]),
                   _joined([part.node_ptr for part in parts]), _joined([part.edge_ptr for part in parts]))

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays by name (for ``np.savez``); ``MoleculeGraphs(**arrays)`` rebuilds it."""
        return {name: getattr(self, name) for name in ARRAYS}

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.node_ptr)

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays().values())

    def len(self) -> int:
        return len(self.node_ptr) - 1

    def get(self, index: int) -> Data:
        nodes, edges = slice(*self.node_ptr[index:index + 2]), slice(*self.edge_ptr[index:index + 2])
        x = torch.from_numpy(self.x[nodes].astype(np.int64))
        return Data(x=x, edge_index=torch.from_numpy(self.edge_index[:, edges].astype(np.int64)),
                    edge_attr=torch.from_numpy(self.edge_attr[edges].astype(np.int64)), num_nodes=len(x))

    def dense(self, rows: np.ndarray, max_atoms: int | None = None) -> GraphBatch:
        """The model's padded batch of ``rows``: ``to_dense_batch`` of the atom types and ``to_dense_adj``
        of the bond types, padded to ``max_atoms`` or to the largest molecule among them."""
        rows = np.asarray(rows, dtype=np.int64)
        node_counts = self.node_ptr[rows + 1] - self.node_ptr[rows]
        edge_counts = self.edge_ptr[rows + 1] - self.edge_ptr[rows]
        nodes = _ranges(self.node_ptr[rows], node_counts)
        edges = _ranges(self.edge_ptr[rows], edge_counts)
        batch = torch.from_numpy(np.repeat(np.arange(len(rows)), node_counts))
        edge_batch = np.repeat(np.arange(len(rows)), edge_counts)
        shift = (np.cumsum(node_counts) - node_counts)[edge_batch]  # local index -> index in the batch
        edge_index = torch.from_numpy(self.edge_index[:, edges].astype(np.int64) + shift)
        size = max_atoms if max_atoms is not None else int(node_counts.max(initial=1))
        x = torch.from_numpy(self.x[nodes].astype(np.int64))
        atoms, mask = to_dense_batch(x, batch, fill_value=0, max_num_nodes=size, batch_size=len(rows))
        bonds = to_dense_adj(edge_index, batch, torch.from_numpy(self.edge_attr[edges].astype(np.int64)),
                             max_num_nodes=size, batch_size=len(rows))
        return GraphBatch(atoms, bonds, mask)


def smiles_to_data(smiles: Sequence[str | None], vocab_dict: dict) -> list[Data]:
    """Each SMILES as a :class:`Data` of type ids in the vocabulary ``vocab_dict``, with ``smiles``,
    ``status`` and ``reason``; a row that cannot be encoded (``invalid_smiles``, ``out_of_domain``) has
    no atoms and says why, so every row comes back."""
    from molgen.scoring import encode_smiles  # scoring reads checkpoints; this module stays below it

    encoded = encode_smiles(list(smiles), [None] * len(smiles), vocab_dict)
    graphs = MoleculeGraphs.from_dense(encoded.atoms, encoded.bonds, encoded.sizes)
    by_row = dict(zip(encoded.positions.tolist(), range(len(graphs))))
    out = []
    for row, text in enumerate(smiles):
        data = graphs[by_row[row]] if row in by_row else Data(
            x=torch.zeros(0, dtype=torch.long), edge_index=torch.zeros(2, 0, dtype=torch.long),
            edge_attr=torch.zeros(0, dtype=torch.long), num_nodes=0)
        data.smiles, data.status, data.reason = text, encoded.status[row], encoded.reason[row]
        out.append(data)
    return out


def _offsets(counts) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])


def _joined(pointers: Sequence[np.ndarray]) -> np.ndarray:
    """Offsets of consecutive parts as one offset array."""
    out, base = [np.zeros(1, dtype=np.int64)], 0
    for pointer in pointers:
        out.append(pointer[1:] + base)
        base += int(pointer[-1])
    return np.concatenate(out)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ..., start + count - 1 of every (start, count), concatenated."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    first = np.cumsum(counts) - counts
    return np.repeat(starts - first, counts) + np.arange(total)

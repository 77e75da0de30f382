"""Graph-aware tokenizer: a molecule as a sequence of atom tokens plus a bond-type matrix.

A molecule with n heavy atoms becomes
  * ``atoms``: n atom-type ids, one per token, over the vocabulary's (element, formal charge) pairs;
  * ``bonds``: an n x n symmetric matrix of bond-type ids over ``BOND_TYPES``,
in RDKit canonical atom order with hydrogens implicit and bonds kekulized, so the sequence holds the
whole graph and one molecule has one sequence (DESIGN section 1).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from rdkit import Chem

# Bump when the encoding changes: prepared-data caches are keyed by it.
TOKENIZER_VERSION = 1

BOND_TYPES = ("none", "single", "double", "triple")
BOND_ORDER_TO_ID = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
ID_TO_BOND_ORDER = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}

AtomKey = tuple[str, int]  # (element symbol, formal charge)

_PERIODIC_TABLE = Chem.GetPeriodicTable()


class OutOfDomain(ValueError):
    """The molecule is valid chemistry but the vocabulary cannot represent it."""


def atom_label(key: AtomKey) -> str:
    symbol, charge = key
    if charge == 0:
        return symbol
    sign = "+" if charge > 0 else "-"
    return symbol + sign * abs(charge) if abs(charge) <= 2 else f"{symbol}{charge:+d}"


def max_valence(key: AtomKey) -> int:
    """Largest bond-order sum RDKit accepts for this (element, charge), hydrogens excluded.

    RDKit treats a charged main-group atom like its isoelectronic neighbour (N+ like C, O- like F),
    so the allowed valence is that of the element with atomic number Z - charge.
    """
    symbol, charge = key
    shifted = _PERIODIC_TABLE.GetAtomicNumber(symbol) - charge
    if shifted < 1:
        return 0
    valences = [v for v in _PERIODIC_TABLE.GetValenceList(shifted) if v >= 0]
    return max(valences, default=0)


@dataclass(frozen=True)
class Vocabulary:
    """Atom types and maximum size: everything needed to encode and decode, as plain values."""

    atom_types: tuple[AtomKey, ...]
    max_atoms: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "atom_types", tuple((str(s), int(c)) for s, c in self.atom_types))
        if len(set(self.atom_types)) != len(self.atom_types):
            raise ValueError("atom types must be unique")
        object.__setattr__(self, "_index", {key: i for i, key in enumerate(self.atom_types)})
        object.__setattr__(self, "_elements", {s for s, _ in self.atom_types})

    @property
    def num_atom_types(self) -> int:
        return len(self.atom_types)

    @property
    def labels(self) -> list[str]:
        return [atom_label(key) for key in self.atom_types]

    @property
    def max_valences(self) -> np.ndarray:
        return np.array([max_valence(key) for key in self.atom_types], dtype=np.int64)

    def index(self, key: AtomKey) -> int | None:
        return self._index.get(key)  # type: ignore[attr-defined]

    def has_element(self, symbol: str) -> bool:
        return symbol in self._elements  # type: ignore[attr-defined]

    def to_dict(self) -> dict:
        return {
            "atom_types": [[s, c] for s, c in self.atom_types],
            "bond_types": list(BOND_TYPES),
            "max_atoms": self.max_atoms,
            "tokenizer_version": TOKENIZER_VERSION,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        if list(data.get("bond_types", BOND_TYPES)) != list(BOND_TYPES):
            raise ValueError(f"unsupported bond types {data['bond_types']}")
        return cls(tuple((s, c) for s, c in data["atom_types"]), int(data["max_atoms"]))

    @classmethod
    def from_graphs(cls, graphs: Iterable["MolecularGraph"], max_atoms: int | None = None) -> "Vocabulary":
        """Atom types seen in ``graphs``, most frequent first; ``max_atoms`` defaults to the largest."""
        counts: Counter[AtomKey] = Counter()
        largest = 0
        for graph in graphs:
            counts.update(graph.atom_keys)
            largest = max(largest, graph.num_atoms)
        if not counts:
            raise ValueError("cannot build a vocabulary from no molecules")
        ordered = sorted(counts, key=lambda key: (-counts[key], key))
        return cls(tuple(ordered), max_atoms if max_atoms is not None else largest)


@dataclass(frozen=True)
class MolecularGraph:
    """A molecule in canonical atom order, before mapping atom types to vocabulary ids."""

    atom_keys: tuple[AtomKey, ...]
    bonds: np.ndarray  # (n, n) int8 bond-type ids, symmetric, zero diagonal
    radical_electrons: int

    @property
    def num_atoms(self) -> int:
        return len(self.atom_keys)


@dataclass(frozen=True)
class GraphTokens:
    """A molecule as vocabulary ids: ``atoms`` (n,) and ``bonds`` (n, n)."""

    atoms: np.ndarray
    bonds: np.ndarray

    @property
    def num_atoms(self) -> int:
        return int(self.atoms.shape[0])


def molecular_graph(mol: Chem.Mol) -> MolecularGraph:
    """Canonical-order kekulized graph of a sanitized molecule (hydrogens implicit).

    Ranking is done on the aromatic (sanitized) form and kekulization after renumbering, so the
    order does not depend on which Kekulé structure the input happened to be written in.
    """
    mol = Chem.RemoveHs(mol, sanitize=False) if _has_explicit_hydrogen_atoms(mol) else mol
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=True))
    order = sorted(range(mol.GetNumAtoms()), key=ranks.__getitem__)
    canonical = Chem.RenumberAtoms(mol, order)
    Chem.Kekulize(canonical, clearAromaticFlags=True)
    n = canonical.GetNumAtoms()
    bonds = np.zeros((n, n), dtype=np.int8)
    for bond in canonical.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bond_id = BOND_ORDER_TO_ID.get(bond.GetBondType())
        if bond_id is None:
            raise OutOfDomain(f"bond type {bond.GetBondType()} is not single, double or triple")
        bonds[i, j] = bonds[j, i] = bond_id
    keys = tuple((atom.GetSymbol(), atom.GetFormalCharge()) for atom in canonical.GetAtoms())
    radicals = sum(atom.GetNumRadicalElectrons() for atom in canonical.GetAtoms())
    return MolecularGraph(keys, bonds, radicals)


def _has_explicit_hydrogen_atoms(mol: Chem.Mol) -> bool:
    return any(atom.GetAtomicNum() == 1 for atom in mol.GetAtoms())


def _atom_problem(atom_keys: list[AtomKey] | tuple[AtomKey, ...], radicals: int, vocab: Vocabulary) -> str | None:
    for key in atom_keys:
        if not vocab.has_element(key[0]):
            return f"element {key[0]} not in vocabulary"
    for key in atom_keys:
        if vocab.index(key) is None:
            charge = f"charge {key[1]:+d}" if key[1] else "neutral"
            return f"atom type {atom_label(key)} ({charge}) not in vocabulary"
    if len(atom_keys) > vocab.max_atoms:
        return f"{len(atom_keys)} heavy atoms > {vocab.max_atoms}"
    if not atom_keys:
        return "no heavy atoms"
    if radicals:
        return f"{radicals} radical electron(s)"
    return None


def domain_problem(graph: MolecularGraph, vocab: Vocabulary) -> str | None:
    """Why ``vocab`` cannot represent ``graph``, or None when it can."""
    problem = _atom_problem(graph.atom_keys, graph.radical_electrons, vocab)
    if problem is None and (fragments := _component_count(graph.bonds)) > 1:
        return f"{fragments} disconnected fragments (salt or mixture)"
    return problem


def mol_domain_problem(mol: Chem.Mol, vocab: Vocabulary) -> str | None:
    """:func:`domain_problem` read off the molecule itself, before the (costlier) canonical ordering:
    screening sets are mostly out of domain, and this rejects them cheaply with the same reasons."""
    atoms = [atom for atom in mol.GetAtoms() if atom.GetAtomicNum() != 1]
    keys = [(atom.GetSymbol(), atom.GetFormalCharge()) for atom in atoms]
    problem = _atom_problem(keys, sum(atom.GetNumRadicalElectrons() for atom in atoms), vocab)
    if problem is None and (fragments := len(Chem.GetMolFrags(mol))) > 1:
        return f"{fragments} disconnected fragments (salt or mixture)"
    return problem


def tokens_from_graph(graph: MolecularGraph, vocab: Vocabulary) -> GraphTokens:
    problem = domain_problem(graph, vocab)
    if problem is not None:
        raise OutOfDomain(problem)
    atoms = np.array([vocab.index(key) for key in graph.atom_keys], dtype=np.int8)
    return GraphTokens(atoms, graph.bonds)


def encode(mol: Chem.Mol, vocab: Vocabulary) -> GraphTokens:
    """Tokens of a sanitized molecule; raises :class:`OutOfDomain` with the reason otherwise."""
    problem = mol_domain_problem(mol, vocab)
    if problem is not None:
        raise OutOfDomain(problem)
    return tokens_from_graph(molecular_graph(mol), vocab)


def _component_count(bonds: np.ndarray) -> int:
    n = bonds.shape[0]
    seen = np.zeros(n, dtype=bool)
    components = 0
    for start in range(n):
        if seen[start]:
            continue
        components += 1
        stack = [start]
        seen[start] = True
        while stack:
            node = stack.pop()
            for neighbour in np.nonzero(bonds[node])[0]:
                if not seen[neighbour]:
                    seen[neighbour] = True
                    stack.append(int(neighbour))
    return components


@dataclass
class GraphBatch:
    """Padded batch: ``atoms`` (B, N) and ``bonds`` (B, N, N) long ids, ``mask`` (B, N) bool."""

    atoms: torch.Tensor
    bonds: torch.Tensor
    mask: torch.Tensor

    @property
    def sizes(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str) -> "GraphBatch":
        return GraphBatch(self.atoms.to(device), self.bonds.to(device), self.mask.to(device))

    def one_hot(self, num_atom_types: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float one-hots ``X`` (B, N, A) and ``E`` (B, N, N, 4), zero outside real atoms/pairs:
        the clean state z_0 of the noise process. The diagonal of ``E`` is zero (no self-bonds).
        """
        atom_mask = self.mask.unsqueeze(-1).float()
        x = torch.nn.functional.one_hot(self.atoms, num_atom_types).float() * atom_mask
        pair_mask = pair_mask_of(self.mask).unsqueeze(-1).float()
        e = torch.nn.functional.one_hot(self.bonds, len(BOND_TYPES)).float() * pair_mask
        return x, e


def pair_mask_of(mask: torch.Tensor) -> torch.Tensor:
    """(B, N, N) bool: both atoms real and distinct."""
    pairs = mask.unsqueeze(1) & mask.unsqueeze(2)
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return pairs & ~eye


def batch_from_arrays(atoms: np.ndarray, bonds: np.ndarray, sizes: np.ndarray) -> GraphBatch:
    """Batch from padded id arrays (B, N), (B, N, N) and sizes (B,), as datasets store them."""
    sizes_t = torch.from_numpy(sizes.astype(np.int64))
    return GraphBatch(
        atoms=torch.from_numpy(atoms.astype(np.int64)),
        bonds=torch.from_numpy(bonds.astype(np.int64)),
        mask=torch.arange(atoms.shape[1])[None, :] < sizes_t[:, None],
    )


def collate(tokens: list[GraphTokens], max_atoms: int) -> GraphBatch:
    batch = len(tokens)
    atoms = torch.zeros(batch, max_atoms, dtype=torch.long)
    bonds = torch.zeros(batch, max_atoms, max_atoms, dtype=torch.long)
    mask = torch.zeros(batch, max_atoms, dtype=torch.bool)
    for row, item in enumerate(tokens):
        n = item.num_atoms
        if n > max_atoms:
            raise ValueError(f"molecule with {n} atoms does not fit a batch of {max_atoms}")
        atoms[row, :n] = torch.from_numpy(item.atoms.astype(np.int64))
        bonds[row, :n, :n] = torch.from_numpy(item.bonds.astype(np.int64))
        mask[row, :n] = True
    return GraphBatch(atoms, bonds, mask)

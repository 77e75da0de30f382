"""Graph-aware tokenizer: a molecule as a sequence of atom tokens plus a bond-type matrix.

A molecule with n heavy atoms becomes
  * ``atoms``: n atom-type ids, one per token, over the vocabulary's (element, formal charge,
    hydrogens) keys;
  * ``bonds``: an n x n symmetric matrix of bond-type ids over the vocabulary's bond types,
in RDKit canonical atom order with hydrogens implicit, so the sequence holds the whole graph and one
molecule has one sequence (docs/design.md, section 1).

Two bond vocabularies exist. ``KEKULE_BONDS`` (none/single/double/triple) kekulizes aromatic rings: a
generator must then place alternating double bonds, a global constraint it learns poorly (samples
of the first QM9 models were 4% aromatic against 17% of the data). ``AROMATIC_BONDS`` adds an
aromatic bond type, as DiGress does; decoding kekulizes. An aromatic ring does not say where its
hydrogens sit on nitrogen (pyridine n against pyrrole [nH]), so in that vocabulary aromatic atoms
other than neutral carbon carry their hydrogen count in their key; everywhere else it is 0 and the
hydrogens follow from valence.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from rdkit import Chem

# Bump when an existing encoding changes: prepared-data caches are keyed by it.
TOKENIZER_VERSION = 1

KEKULE_BONDS = ("none", "single", "double", "triple")
AROMATIC_BONDS = KEKULE_BONDS + ("aromatic",)
BOND_ORDERS = {"none": 0.0, "single": 1.0, "double": 2.0, "triple": 3.0, "aromatic": 1.5}
RDKIT_BOND_TYPES = {
    "single": Chem.BondType.SINGLE, "double": Chem.BondType.DOUBLE,
    "triple": Chem.BondType.TRIPLE, "aromatic": Chem.BondType.AROMATIC,
}

AtomKey = tuple[str, int, int]  # (element symbol, formal charge, hydrogens stated in the key)

_PERIODIC_TABLE = Chem.GetPeriodicTable()


class OutOfDomain(ValueError):
    """The molecule is valid chemistry but the vocabulary cannot represent it."""


def atom_label(key: AtomKey) -> str:
    symbol, charge, hydrogens = key
    label = symbol + ("H" if hydrogens == 1 else f"H{hydrogens}" if hydrogens else "")
    if charge == 0:
        return label
    sign = "+" if charge > 0 else "-"
    return label + sign * abs(charge) if abs(charge) <= 2 else f"{label}{charge:+d}"


def max_valence(key: AtomKey) -> int:
    """Largest bond-order sum RDKit accepts for this atom type, its stated hydrogens excluded.

    RDKit treats a charged main-group atom like its isoelectronic neighbour (N+ like C, O- like F),
    so the allowed valence is that of the element with atomic number Z - charge.
    """
    symbol, charge, hydrogens = key
    shifted = _PERIODIC_TABLE.GetAtomicNumber(symbol) - charge
    if shifted < 1:
        return 0
    valences = [v for v in _PERIODIC_TABLE.GetValenceList(shifted) if v >= 0]
    return max(max(valences, default=0) - hydrogens, 0)


def atom_key(atom: Chem.Atom, aromatic_bonds: bool) -> AtomKey:
    """The vocabulary key of a sanitized atom; see the module docstring for when hydrogens count."""
    symbol, charge = atom.GetSymbol(), atom.GetFormalCharge()
    states_hydrogens = aromatic_bonds and atom.GetIsAromatic() and (symbol, charge) != ("C", 0)
    return symbol, charge, atom.GetTotalNumHs() if states_hydrogens else 0


@dataclass(frozen=True)
class Vocabulary:
    """Atom types, bond types and maximum size: everything needed to encode and decode, as plain
    values. Keys written as (element, charge) pairs, as vocabularies before hydrogens were, get 0."""

    atom_types: tuple[AtomKey, ...]
    max_atoms: int
    bond_types: tuple[str, ...] = KEKULE_BONDS

    def __post_init__(self) -> None:
        keys = tuple((str(key[0]), int(key[1]), int(key[2]) if len(key) > 2 else 0) for key in self.atom_types)
        object.__setattr__(self, "atom_types", keys)
        object.__setattr__(self, "bond_types", tuple(self.bond_types))
        if len(set(self.atom_types)) != len(self.atom_types):
            raise ValueError("atom types must be unique")
        if self.bond_types not in (KEKULE_BONDS, AROMATIC_BONDS):
            raise ValueError(f"unsupported bond types {list(self.bond_types)}")
        object.__setattr__(self, "_index", {key: i for i, key in enumerate(self.atom_types)})
        object.__setattr__(self, "_elements", {key[0] for key in self.atom_types})

    @property
    def num_atom_types(self) -> int:
        return len(self.atom_types)

    @property
    def num_bond_types(self) -> int:
        return len(self.bond_types)

    @property
    def aromatic_bonds(self) -> bool:
        return self.bond_types == AROMATIC_BONDS

    @property
    def bond_orders(self) -> tuple[float, ...]:
        return tuple(BOND_ORDERS[name] for name in self.bond_types)

    @property
    def labels(self) -> list[str]:
        return [atom_label(key) for key in self.atom_types]

    @property
    def max_valences(self) -> np.ndarray:
        return np.array([max_valence(key) for key in self.atom_types], dtype=np.int64)

    def index(self, key: AtomKey) -> int | None:
        return self._index.get(key)  # type: ignore[attr-defined]

    def repair_swaps(self) -> np.ndarray:
        """(A, A) bool: which atom type may stand in for which in the ring-broken copies that the repair
        adapter learns from (see :func:`molgen.training.corruptions.ring_atom_swapped`): any other type of
        the same charge."""
        return np.array([[old != new and old[1] == new[1] for new in self.atom_types] for old in self.atom_types],
                        dtype=bool)

    def has_element(self, symbol: str) -> bool:
        return symbol in self._elements  # type: ignore[attr-defined]

    def to_dict(self) -> dict:
        return {
            "atom_types": [list(key) for key in self.atom_types],
            "bond_types": list(self.bond_types),
            "max_atoms": self.max_atoms,
            "tokenizer_version": TOKENIZER_VERSION,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        bond_types = tuple(data.get("bond_types", KEKULE_BONDS))
        return cls(tuple(tuple(key) for key in data["atom_types"]), int(data["max_atoms"]), bond_types)

    @classmethod
    def from_graphs(
        cls, graphs: Iterable["MolecularGraph"], max_atoms: int | None = None, aromatic_bonds: bool = False
    ) -> "Vocabulary":
        """Atom types seen in ``graphs``, most frequent first; ``max_atoms`` defaults to the largest.
        The graphs must have been made with the same ``aromatic_bonds``."""
        counts: Counter[AtomKey] = Counter()
        largest = 0
        for graph in graphs:
            counts.update(graph.atom_keys)
            largest = max(largest, graph.num_atoms)
        if not counts:
            raise ValueError("cannot build a vocabulary from no molecules")
        ordered = sorted(counts, key=lambda key: (-counts[key], key))
        bond_types = AROMATIC_BONDS if aromatic_bonds else KEKULE_BONDS
        return cls(tuple(ordered), max_atoms if max_atoms is not None else largest, bond_types)


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


def molecular_graph(mol: Chem.Mol, aromatic_bonds: bool = False) -> MolecularGraph:
    """Canonical-order graph of a sanitized molecule (hydrogens implicit), kekulized unless
    ``aromatic_bonds``.

    Ranking is done on the aromatic (sanitized) form and kekulization after renumbering, so the
    order does not depend on which Kekulé structure the input happened to be written in.
    """
    mol = Chem.RemoveHs(mol, sanitize=False) if any(atom.GetAtomicNum() == 1 for atom in atoms_of(mol)) else mol
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=True))
    bond_types = AROMATIC_BONDS if aromatic_bonds else KEKULE_BONDS
    if not aromatic_bonds:
        mol = Chem.RenumberAtoms(mol, sorted(range(mol.GetNumAtoms()), key=ranks.__getitem__))
        Chem.Kekulize(mol, clearAromaticFlags=True)
        ranks = list(range(mol.GetNumAtoms()))
    # Otherwise atom a goes to position ranks[a] without renumbering a copy (scoring pays for it).
    bond_ids = {RDKIT_BOND_TYPES[name]: i for i, name in enumerate(bond_types) if name != "none"}
    n = mol.GetNumAtoms()
    bonds = np.zeros((n, n), dtype=np.int8)
    for bond in bonds_of(mol):
        i, j = ranks[bond.GetBeginAtomIdx()], ranks[bond.GetEndAtomIdx()]
        bond_id = bond_ids.get(bond.GetBondType())
        if bond_id is None:
            raise OutOfDomain(f"bond type {bond.GetBondType()} is not one of {', '.join(bond_types[1:])}")
        bonds[i, j] = bonds[j, i] = bond_id
    atoms = atoms_of(mol)
    keys: list[AtomKey] = [None] * n  # type: ignore[list-item]
    for index, atom in enumerate(atoms):
        keys[ranks[index]] = atom_key(atom, aromatic_bonds)
    radicals = sum(atom.GetNumRadicalElectrons() for atom in atoms)
    return MolecularGraph(tuple(keys), bonds, radicals)


# Indexed access: iterating RDKit's GetAtoms()/GetBonds() sequence wrappers costs twice as much per
# item, and scoring pays it several times per molecule.
def atoms_of(mol: Chem.Mol) -> list[Chem.Atom]:
    return [mol.GetAtomWithIdx(i) for i in range(mol.GetNumAtoms())]


def bonds_of(mol: Chem.Mol) -> list[Chem.Bond]:
    return [mol.GetBondWithIdx(i) for i in range(mol.GetNumBonds())]


def _atom_problem(atom_keys: list[AtomKey] | tuple[AtomKey, ...], radicals: int, vocab: Vocabulary) -> str | None:
    for key in atom_keys:
        if not vocab.has_element(key[0]):
            return f"element {key[0]} not in vocabulary"
    for key in atom_keys:
        if vocab.index(key) is None:
            charge = f"charge {key[1]:+d}" if key[1] else "neutral"
            hydrogens = f", {key[2]} H on an aromatic ring" if key[2] else ""
            return f"atom type {atom_label(key)} ({charge}{hydrogens}) not in vocabulary"
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
    atoms = [atom for atom in atoms_of(mol) if atom.GetAtomicNum() != 1]
    keys = [atom_key(atom, vocab.aromatic_bonds) for atom in atoms]
    problem = _atom_problem(keys, sum(atom.GetNumRadicalElectrons() for atom in atoms), vocab)
    if problem is None and (fragments := len(Chem.GetMolFrags(mol))) > 1:
        return f"{fragments} disconnected fragments (salt or mixture)"
    return problem


def encode(mol: Chem.Mol, vocab: Vocabulary) -> GraphTokens:
    """Tokens of a sanitized molecule; raises :class:`OutOfDomain` with the reason otherwise."""
    problem = mol_domain_problem(mol, vocab)
    if problem is not None:
        raise OutOfDomain(problem)
    # The molecule passed the checks of domain_problem, and its graph has the same fragments: only
    # hydrogens that RemoveHs keeps (isotopes, bridging) can still be out of the vocabulary.
    graph = molecular_graph(mol, vocab.aromatic_bonds)
    ids = [vocab.index(key) for key in graph.atom_keys]
    if None in ids:
        raise OutOfDomain(_atom_problem(graph.atom_keys, graph.radical_electrons, vocab))
    return GraphTokens(np.array(ids, dtype=np.int8), graph.bonds)


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

    def one_hot(self, num_atom_types: int, num_bond_types: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float one-hots ``X`` (B, N, A) and ``E`` (B, N, N, B), zero outside real atoms/pairs:
        the clean state z_0 of the noise process. The diagonal of ``E`` is zero (no self-bonds).
        """
        atom_mask = self.mask.unsqueeze(-1).float()
        x = torch.nn.functional.one_hot(self.atoms, num_atom_types).float() * atom_mask
        pair_mask = pair_mask_of(self.mask).unsqueeze(-1).float()
        e = torch.nn.functional.one_hot(self.bonds, num_bond_types).float() * pair_mask
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

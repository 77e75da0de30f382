"""Decoding (atom probabilities, bond probabilities) into RDKit molecules.

* :func:`decode_raw` takes the argmax of everything and sanitizes; it may fail, and its success rate
  is the "validity without correction" that papers report.
* :func:`decode_constrained` is what users get: the argmax graph when that is valid; otherwise it
  keeps the argmax atom types where it can and adds bonds in order of probability only while every
  atom stays within its allowed (charge-aware) valence, so the result is always a valid, connected
  molecule. With aromatic bonds it first turns to the Kekulé view of the probabilities
  (:func:`kekule_view`), where the argmax's aromatic bonds become the double bonds of a maximum
  matching and single bonds elsewhere. RDKit's kekulization needs a perfect matching and fails
  without one; a maximum matching keeps as much of a broken aromatic ring as valences allow.
* :func:`nearest_molecule` is the most probable molecule within two changes of the argmax graph, in
  the model's own vocabulary and atom order: what fitting the repair adapter on the sampler's own
  chains aims them at.

Inputs are one molecule's probabilities: ``atom_probs`` (n, A) and ``bond_probs`` (n, n, B) over the
vocabulary's bond types; they need not be normalised or symmetric (the mean of (i, j) and (j, i) is
used).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from rdkit import Chem

from molgen.chemistry import fragment_count
from molgen.tokenizer import KEKULE_BONDS, RDKIT_BOND_TYPES, Vocabulary


@dataclass(frozen=True)
class RawDecode:
    mol: Chem.Mol | None
    failure: str | None  # None on success; "valence", "disconnected", "kekulize", ... otherwise

    @property
    def valid(self) -> bool:
        return self.mol is not None


@dataclass(frozen=True)
class ConstrainedDecode:
    mol: Chem.Mol
    changed: bool  # whether any atom type or bond differs from the argmax (raw) graph


def decode_raw(atom_probs: np.ndarray, bond_probs: np.ndarray, vocab: Vocabulary) -> RawDecode:
    atom_types, bond_ids = argmax_graph(atom_probs, bond_probs)
    mol = build_molecule(atom_types, bond_ids, vocab)
    try:
        Chem.SanitizeMol(mol)
    except Chem.AtomValenceException:
        return RawDecode(None, "valence")
    except Chem.KekulizeException:
        return RawDecode(None, "kekulize")
    except Exception as error:  # RDKit has no common base class for sanitization errors
        return RawDecode(None, type(error).__name__)
    if mol.GetNumAtoms() > 1 and fragment_count(mol) > 1:
        return RawDecode(None, "disconnected")
    if not reads_back(mol):
        return RawDecode(None, "round_trip")
    return RawDecode(mol, None)


def reads_back(mol: Chem.Mol) -> bool:
    """Whether RDKit reads the SMILES it writes for ``mol``. Not always so for a built graph: it can
    perceive an aromatic system it then writes but cannot kekulize on reading (a sulfur with a double
    bond in a fused ring, `...c1-s32`, one in 10,000 drug-like samples). A validity that users and the
    MOSES protocol measure on SMILES has to exclude it."""
    return Chem.MolFromSmiles(Chem.MolToSmiles(mol)) is not None


def decode_constrained(
    atom_probs: np.ndarray, bond_probs: np.ndarray, vocab: Vocabulary, raw: RawDecode | None = None
) -> ConstrainedDecode:
    """``raw``: :func:`decode_raw` of the same probabilities, when the caller has it already."""
    atom_probs = np.asarray(atom_probs, dtype=np.float64)
    bond_probs = _symmetrise(np.asarray(bond_probs, dtype=np.float64))
    n = atom_probs.shape[0]
    if n == 0:
        raise ValueError("cannot decode a molecule with no atoms")
    if raw is None:
        raw = decode_raw(atom_probs, bond_probs, vocab)
    if raw.valid:  # a valid, connected argmax graph is kept as it is
        return ConstrainedDecode(raw.mol, False)
    if vocab.aromatic_bonds:
        return ConstrainedDecode(decode_constrained(*kekule_view(atom_probs, bond_probs, vocab)).mol, True)
    valences = vocab.max_valences
    atom_types = _tree_feasible_atom_types(atom_probs, atom_probs.argmax(axis=-1), valences)
    bonds = _assign_bonds(bond_probs, valences[atom_types].copy())
    mol = build_molecule(atom_types, bonds, vocab)
    Chem.SanitizeMol(mol)  # cannot fail by construction; an exception here is a bug worth seeing
    if not reads_back(mol):
        # Kept as the Kekulé structure it was built as, without the aromatic perception RDKit cannot
        # read back: its SMILES (Kekulé, upper case) is one RDKit reads.
        mol = build_molecule(atom_types, bonds, vocab)
        Chem.SanitizeMol(mol, Chem.SANITIZE_ALL ^ Chem.SANITIZE_SETAROMATICITY)
    return ConstrainedDecode(mol, True)  # the raw graph was invalid, so this one differs from it


def nearest_molecule(
    atom_probs: np.ndarray, bond_probs: np.ndarray, vocab: Vocabulary, candidates: int = 30
) -> tuple[np.ndarray, np.ndarray] | None:
    """(atom type ids, bond id matrix) of the most probable graph that :func:`decode_raw` accepts among
    the argmax graph, every graph one atom type or bond away from it, and those two changes away that
    combine two of the ``candidates`` most probable single changes; None when there is none.

    Atoms and pairs are independent under the probabilities, so a change costs its log-probability
    ratio and the most probable graphs are tried first. Unlike :func:`decode_constrained` this keeps
    aromatic bonds (a broken five-membered ring is usually one hydrogen from a real one), and the
    atoms stay where the sampler put them.
    """
    atom_probs = np.asarray(atom_probs, dtype=np.float64)
    bond_probs = _symmetrise(np.asarray(bond_probs, dtype=np.float64))
    types, bonds = argmax_graph(atom_probs, bond_probs)

    eye_atoms, eye_bonds = np.eye(vocab.num_atom_types), np.eye(vocab.num_bond_types)

    def is_molecule(new_types: np.ndarray, new_bonds: np.ndarray) -> bool:
        return decode_raw(eye_atoms[new_types], eye_bonds[new_bonds], vocab).valid

    if is_molecule(types, bonds):
        return types, bonds
    log_atoms, log_bonds = np.log(np.clip(atom_probs, 1e-12, None)), np.log(np.clip(bond_probs, 1e-12, None))
    changes = []  # (log-probability ratio, (atom,) or (i, j), new id)
    for i, current in enumerate(types):
        changes += [(log_atoms[i, new] - log_atoms[i, current], (i,), new)
                    for new in range(vocab.num_atom_types) if new != current]
    for i, j in zip(*np.triu_indices(len(types), k=1)):
        current = bonds[i, j]
        changes += [(log_bonds[i, j, new] - log_bonds[i, j, current], (int(i), int(j)), new)
                    for new in range(vocab.num_bond_types) if new != current]
    changes.sort(key=lambda change: -change[0])

    def changed(chosen) -> tuple[np.ndarray, np.ndarray]:
        new_types, new_bonds = types.copy(), bonds.copy()
        for _, where, new in chosen:
            if len(where) == 1:
                new_types[where[0]] = new
            else:
                new_bonds[where] = new_bonds[where[::-1]] = new
        return new_types, new_bonds

    for change in changes:
        if is_molecule(*changed([change])):
            return changed([change])
    pairs = [(a, b) for k, a in enumerate(changes[:candidates]) for b in changes[k + 1 : candidates] if a[1] != b[1]]
    for pair in sorted(pairs, key=lambda pair: -(pair[0][0] + pair[1][0])):
        if is_molecule(*changed(pair)):
            return changed(pair)
    return None


def argmax_graph(atom_probs: np.ndarray, bond_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    atom_types = np.asarray(atom_probs).argmax(axis=-1)
    bonds = _symmetrise(np.asarray(bond_probs, dtype=np.float64)).argmax(axis=-1)
    np.fill_diagonal(bonds, 0)
    return atom_types, bonds


def build_molecule(atom_types: np.ndarray, bonds: np.ndarray, vocab: Vocabulary) -> Chem.Mol:
    """Unsanitized molecule from atom-type ids and a bond-id matrix (upper triangle is read).

    Atoms on an aromatic bond are aromatic and get their stated hydrogens, as a SMILES parser does
    for ``[nH]``; elsewhere stated hydrogens are ignored and hydrogens follow from valence.
    """
    rdkit_bonds = [RDKIT_BOND_TYPES.get(name) for name in vocab.bond_types]
    aromatic_id = vocab.bond_types.index("aromatic") if vocab.aromatic_bonds else -1
    on_aromatic_bond = (np.asarray(bonds) == aromatic_id).any(axis=1)
    mol = Chem.RWMol()
    for type_id, aromatic in zip(atom_types, on_aromatic_bond):
        symbol, charge, hydrogens = vocab.atom_types[int(type_id)]
        atom = Chem.Atom(symbol)
        atom.SetFormalCharge(charge)
        if aromatic:
            atom.SetIsAromatic(True)
            if hydrogens:
                atom.SetNumExplicitHs(hydrogens)
                atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    rows, cols = np.nonzero(np.triu(bonds, k=1))
    for i, j in zip(rows.tolist(), cols.tolist()):
        bond_id = int(bonds[i, j])
        mol.AddBond(i, j, rdkit_bonds[bond_id])
        if bond_id == aromatic_id:
            mol.GetBondBetweenAtoms(i, j).SetIsAromatic(True)
    return mol.GetMol()


def kekule_view(
    atom_probs: np.ndarray, bond_probs: np.ndarray, vocab: Vocabulary
) -> tuple[np.ndarray, np.ndarray, Vocabulary]:
    """The probabilities over a Kekulé vocabulary: atom types with stated hydrogens merged into their
    plain (element, charge) type; aromatic bond mass moved to double on the bonds of
    :func:`aromatic_double_bonds`, to single elsewhere."""
    plain_keys = list(dict.fromkeys((symbol, charge, 0) for symbol, charge, _ in vocab.atom_types))
    merge = np.zeros((vocab.num_atom_types, len(plain_keys)))
    for row, (symbol, charge, _) in enumerate(vocab.atom_types):
        merge[row, plain_keys.index((symbol, charge, 0))] = 1.0
    kekule = Vocabulary(tuple(plain_keys), vocab.max_atoms, KEKULE_BONDS)
    aromatic = vocab.bond_types.index("aromatic")
    doubles = aromatic_double_bonds(atom_probs, bond_probs, vocab)
    folded = bond_probs[..., : len(KEKULE_BONDS)].copy()
    folded[..., KEKULE_BONDS.index("single")] += np.where(doubles, 0.0, bond_probs[..., aromatic])
    folded[..., KEKULE_BONDS.index("double")] += np.where(doubles, bond_probs[..., aromatic], 0.0)
    return atom_probs @ merge, folded, kekule


def aromatic_double_bonds(atom_probs: np.ndarray, bond_probs: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """(n, n) bool: a maximum matching on the argmax graph's aromatic bonds, among atoms with a
    valence to spare once every bond counts at its lowest order (aromatic as single), so an atom
    such as [nH] or furan's o, already full, takes no double bond."""
    atom_types, bonds = argmax_graph(atom_probs, bond_probs)
    aromatic = vocab.bond_types.index("aromatic")
    lowest = np.array([1.0 if name == "aromatic" else order for name, order in zip(vocab.bond_types, vocab.bond_orders)])
    spare = vocab.max_valences[atom_types] - lowest[bonds].sum(axis=1) >= 1
    graph = nx.Graph()
    rows, cols = np.nonzero(np.triu(bonds == aromatic, k=1))
    graph.add_edges_from((i, j) for i, j in zip(rows.tolist(), cols.tolist()) if spare[i] and spare[j])
    doubles = np.zeros(bonds.shape, dtype=bool)
    for i, j in nx.max_weight_matching(graph, maxcardinality=True):
        doubles[i, j] = doubles[j, i] = True
    return doubles


def _symmetrise(bond_probs: np.ndarray) -> np.ndarray:
    return 0.5 * (bond_probs + bond_probs.transpose(1, 0, 2))


def _tree_feasible_atom_types(
    atom_probs: np.ndarray, atom_types: np.ndarray, valences: np.ndarray
) -> np.ndarray:
    """Change as few, as likely, atom types as needed for a connected molecule to exist.

    n atoms can be joined by a tree iff every atom has valence >= 1 and the valences sum to at
    least 2(n - 1). Each change swaps one atom to a higher-valence type, taking the change that
    costs the least probability, so the loop ends (at worst every atom gets the top valence).
    """
    n = atom_types.shape[0]
    if n == 1:
        return atom_types
    if valences.max() < 1 or (n > 2 and valences.max() < 2):
        raise ValueError(f"no atom type in the vocabulary can join {n} atoms into one molecule")
    while True:
        current = valences[atom_types]
        if current.min() >= 1 and current.sum() >= 2 * (n - 1):
            return atom_types
        # Cost of each (atom, new type): probability lost; only upgrades in valence qualify.
        gain = atom_probs - atom_probs[np.arange(n), atom_types][:, None]
        upgrade = valences[None, :] > current[:, None]
        if current.min() < 1:  # atoms that cannot bond at all are fixed first
            upgrade &= (current < 1)[:, None]
        gain = np.where(upgrade, gain, -np.inf)
        atom, new_type = np.unravel_index(np.argmax(gain), gain.shape)
        atom_types[atom] = new_type


def _assign_bonds(bond_probs: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Bond ids (n, n) within ``capacity`` (remaining valence per atom), always connected.

    1. A spanning tree of single bonds, Kruskal-style: pairs the model wants bonded first (by the
       probability of their best bond order), then the rest (by 1 - p(none)). A merge is refused if
       it would leave the merged fragment with no free valence while other fragments remain, which
       keeps the tree completable (see ``_tree_feasible_atom_types``).
    2. Every wanted bond (ring closures, higher orders on tree bonds) in order of probability, each
       at the highest order the remaining valence allows, up to the model's preferred order.
    When the argmax graph is itself valid and connected, this returns exactly that graph.
    """
    n = capacity.shape[0]
    bonds = np.zeros((n, n), dtype=np.int64)
    if n == 1:
        return bonds
    rows, cols = np.triu_indices(n, k=1)
    pair_probs = bond_probs[rows, cols]  # (P, 4)
    best_order = 1 + pair_probs[:, 1:].argmax(axis=1)
    best_prob = pair_probs[:, 1:].max(axis=1)
    wanted = best_prob > pair_probs[:, 0]

    tree_key = np.where(wanted, 2.0 + best_prob, 1.0 - pair_probs[:, 0])
    parent = list(range(n))
    free = {i: int(capacity[i]) for i in range(n)}  # free valence of each fragment, keyed by root

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    fragments = n
    for pair in np.argsort(-tree_key, kind="stable"):
        i, j = int(rows[pair]), int(cols[pair])
        a, b = root(i), root(j)
        if a == b or capacity[i] < 1 or capacity[j] < 1:
            continue
        merged_free = free[a] + free[b] - 2
        if merged_free < 1 and fragments > 2:
            continue
        bonds[i, j] = bonds[j, i] = 1
        capacity[i] -= 1
        capacity[j] -= 1
        parent[b] = a
        free[a] = merged_free
        fragments -= 1
        if fragments == 1:
            break

    for pair in np.argsort(-best_prob, kind="stable"):
        i, j = int(rows[pair]), int(cols[pair])
        if not wanted[pair]:  # a tree bond the model did not want stays single
            continue
        current = bonds[i, j]
        target = min(int(best_order[pair]), current + int(min(capacity[i], capacity[j])))
        if target > current:
            bonds[i, j] = bonds[j, i] = target
            capacity[i] -= target - current
            capacity[j] -= target - current
    return bonds

"""Decoys for density AUROC, built from the data the project has (docs/design.md, section 8).

Hard decoys are single-edit mutants of real molecules: one change of an element, a bond order, a
ring bond, or a terminal atom, kept only when RDKit accepts the result, it stays one connected
neutral molecule within the element set and size limit, and it is not in the reference set
(e.g. all of QM9). They look like the real thing to a fingerprint; a model of the distribution
should still find them less likely. Drug-like decoys are simply other files (MOSES, MoleculeNet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem

from molgen.chemistry import canonical_smiles, parse_smiles

EDITS = ("element", "bond_order", "remove_ring_bond", "close_ring", "remove_terminal_atom", "add_terminal_atom")
_BOND_OF_ORDER = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


@dataclass(frozen=True)
class Mutant:
    parent: str
    smiles: str
    edit: str


def _apply(mol: Chem.Mol, edit: str, rng: np.random.Generator, elements: tuple[str, ...]) -> Chem.Mol | None:
    """One random edit of kind ``edit`` on a kekulized copy; None when the kind does not apply."""
    editable = Chem.RWMol(mol)
    Chem.Kekulize(editable, clearAromaticFlags=True)
    atoms, bonds = list(editable.GetAtoms()), list(editable.GetBonds())
    if edit == "element":
        atom = atoms[rng.integers(len(atoms))]
        choices = [e for e in elements if e != atom.GetSymbol()]
        atom.SetAtomicNum(Chem.GetPeriodicTable().GetAtomicNumber(str(rng.choice(choices))))
    elif edit == "bond_order" and bonds:
        bond = bonds[rng.integers(len(bonds))]
        order = int(bond.GetBondTypeAsDouble())
        bond.SetBondType(_BOND_OF_ORDER[int(rng.choice([o for o in (1, 2, 3) if o != order]))])
    elif edit == "remove_ring_bond":
        ring_bonds = [b for b in bonds if b.IsInRing()]
        if not ring_bonds:
            return None
        bond = ring_bonds[rng.integers(len(ring_bonds))]
        editable.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    elif edit == "close_ring":
        pairs = [(i, j) for i in range(len(atoms)) for j in range(i + 1, len(atoms))
                 if editable.GetBondBetweenAtoms(i, j) is None]
        if not pairs:
            return None
        i, j = pairs[rng.integers(len(pairs))]
        editable.AddBond(i, j, Chem.BondType.SINGLE)
    elif edit == "remove_terminal_atom":
        terminal = [a.GetIdx() for a in atoms if a.GetDegree() == 1]
        if not terminal or len(atoms) < 2:
            return None
        editable.RemoveAtom(int(terminal[rng.integers(len(terminal))]))
    elif edit == "add_terminal_atom":
        anchor = int(rng.integers(len(atoms)))
        new = editable.AddAtom(Chem.Atom(str(rng.choice(elements))))
        editable.AddBond(anchor, new, Chem.BondType.SINGLE)
    else:
        return None
    for atom in editable.GetAtoms():
        atom.SetNoImplicit(False)
        atom.SetNumExplicitHs(0)
    mutant = editable.GetMol()
    try:
        Chem.SanitizeMol(mutant)
    except Exception:  # RDKit raises several types for impossible valences and kekulization
        return None
    return mutant


def single_edit_mutants(
    smiles: list[str], exclude: set[str], seed: int = 0, elements: tuple[str, ...] = ("C", "N", "O", "F"),
    max_atoms: int = 9, tries: int = 50,
) -> list[Mutant | None]:
    """One mutant per parent (None when ``tries`` random edits all fail): valid, one fragment,
    neutral, only ``elements``, at most ``max_atoms`` heavy atoms, canonical SMILES not in
    ``exclude`` and not repeated within the list."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[Mutant | None] = []
    for parent in smiles:
        mol = parse_smiles(parent)
        found = None
        for _ in range(tries if mol is not None else 0):
            edit = str(rng.choice(EDITS))
            mutant = _apply(mol, edit, rng, elements)
            if mutant is None or len(Chem.GetMolFrags(mutant)) != 1 or mutant.GetNumAtoms() > max_atoms:
                continue
            if any(a.GetFormalCharge() or a.GetNumRadicalElectrons() for a in mutant.GetAtoms()):
                continue
            if any(a.GetSymbol() not in elements for a in mutant.GetAtoms()):
                continue
            text = canonical_smiles(mutant)
            if text in exclude or text in seen:
                continue
            seen.add(text)
            found = Mutant(canonical_smiles(mol), text, edit)
            break
        out.append(found)
    return out

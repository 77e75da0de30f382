import numpy as np
import pytest
from rdkit import Chem

from molgen.chemistry import canonical_smiles, fragment_count, parse_smiles
from molgen.decode import build_molecule, decode_constrained, decode_raw
from molgen.tokenizer import Vocabulary, encode, molecular_graph

QM9_LIKE = ["C", "C#N", "C[N+](=O)[O-]", "[C-]#[N+]C", "[NH3+]CC(=O)[O-]", "[N-]=[N+]=NC", "FC(F)F", "c1ccoc1"]


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.from_graphs((molecular_graph(parse_smiles(s)) for s in QM9_LIKE), max_atoms=9)


@pytest.mark.slow
def test_constrained_decode_of_random_probabilities_is_always_valid_and_connected(vocab):
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(10_000):
        n = int(rng.integers(1, vocab.max_atoms + 1))
        concentration = rng.choice([0.1, 1.0, 10.0])  # peaked, flat and in-between distributions
        atom_probs = rng.dirichlet(np.full(vocab.num_atom_types, concentration), size=n)
        bond_probs = rng.dirichlet(np.full(4, concentration), size=(n, n))
        result = decode_constrained(atom_probs, bond_probs, vocab)
        mol = result.mol
        assert mol.GetNumAtoms() == n
        assert fragment_count(mol) == 1
        assert Chem.MolFromSmiles(canonical_smiles(mol)) is not None  # sanitizes from scratch too
        changed += result.changed
    assert 0 < changed < 10_000  # random inputs mostly need repair, yet not always


def test_constrained_decode_keeps_a_valid_raw_decode_unchanged(vocab):
    for smiles in QM9_LIKE + ["OC1C2CC12", "O=C1C=CC(=O)N1"]:
        mol = parse_smiles(smiles)
        tokens = encode(mol, vocab)
        # Soft probabilities whose argmax is the molecule.
        atom_probs = 0.6 * np.eye(vocab.num_atom_types)[tokens.atoms] + 0.4 / vocab.num_atom_types
        bond_probs = 0.6 * np.eye(4)[tokens.bonds] + 0.1
        raw = decode_raw(atom_probs, bond_probs, vocab)
        constrained = decode_constrained(atom_probs, bond_probs, vocab)
        assert raw.valid
        assert not constrained.changed
        assert canonical_smiles(constrained.mol) == canonical_smiles(raw.mol) == canonical_smiles(mol)


def _probs(vocab, atoms, bonds):
    n = len(atoms)
    atom_probs = np.eye(vocab.num_atom_types)[[vocab.atom_types.index((a, 0, 0)) for a in atoms]]
    bond_ids = np.zeros((n, n), dtype=int)
    for i, j, order in bonds:
        bond_ids[i, j] = bond_ids[j, i] = order
    return atom_probs, np.eye(4)[bond_ids]


def test_raw_decode_reports_valence_and_disconnection(vocab):
    # Pentavalent carbon.
    atom_probs, bond_probs = _probs(vocab, "CCCCCC", [(0, k, 1) for k in range(1, 6)])
    assert decode_raw(atom_probs, bond_probs, vocab).failure == "valence"
    repaired = decode_constrained(atom_probs, bond_probs, vocab)
    assert repaired.changed and repaired.mol.GetAtomWithIdx(0).GetDegree() <= 4
    # Two fragments.
    atom_probs, bond_probs = _probs(vocab, "CCCC", [(0, 1, 1), (2, 3, 1)])
    assert decode_raw(atom_probs, bond_probs, vocab).failure == "disconnected"
    assert fragment_count(decode_constrained(atom_probs, bond_probs, vocab).mol) == 1


def test_constrained_decode_changes_atom_types_when_no_tree_fits(vocab):
    # Three fluorines cannot form one molecule: one atom must become multivalent.
    atom_probs, bond_probs = _probs(vocab, "FFF", [])
    mol = decode_constrained(atom_probs, bond_probs, vocab).mol
    assert fragment_count(mol) == 1
    assert sum(a.GetSymbol() == "F" for a in mol.GetAtoms()) == 2


def test_a_graph_whose_smiles_rdkit_cannot_read_back_is_not_raw_valid_and_decodes_to_one_it_can():
    """From 10,000 drug-like samples: a fused ring system with a sulfur that RDKit sanitizes, perceives as
    aromatic and writes as `...c1-s32`, which it then cannot kekulize on reading."""
    from molgen.checkpoint import load_model

    vocab = load_model("qm9_moses").vocab
    written = "CS(=O)(=O)NC(=O)c1cccncc2cccc3ccc1-s32"
    assert Chem.MolFromSmiles(written) is None
    mol = Chem.MolFromSmiles(written, sanitize=False)
    mol.UpdatePropertyCache(strict=False)
    tokens = encode(mol, vocab)
    bonds = tokens.bonds.copy()
    sulfur = next(i for i, t in enumerate(tokens.atoms) if vocab.atom_types[t][0] == "S" and 4 in bonds[i])
    neighbours = np.flatnonzero(bonds[sulfur])
    for neighbour, bond in zip(neighbours, (1, 1, 4)):  # the sampler's bonds: two single, one aromatic
        bonds[sulfur, neighbour] = bonds[neighbour, sulfur] = bond
    atom_probs = np.eye(vocab.num_atom_types)[tokens.atoms]
    bond_probs = np.eye(vocab.num_bond_types)[bonds]
    mol = build_molecule(tokens.atoms, bonds, vocab)
    Chem.SanitizeMol(mol)  # RDKit accepts the graph ...
    assert Chem.MolFromSmiles(Chem.MolToSmiles(mol)) is None  # ... but not the SMILES it writes for it
    raw = decode_raw(atom_probs, bond_probs, vocab)
    assert not raw.valid and raw.failure == "round_trip"
    fixed = decode_constrained(atom_probs, bond_probs, vocab, raw)
    assert fixed.changed and Chem.MolFromSmiles(Chem.MolToSmiles(fixed.mol)) is not None

import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_file
from rdkit import Chem

from molgen.chemistry import canonical_smiles, parse_smiles
from molgen.decode import decode_constrained, decode_raw
from molgen.tokenizer import (
    AROMATIC_BONDS,
    OutOfDomain,
    Vocabulary,
    collate,
    encode,
    molecular_graph,
    pair_mask_of,
)

# Charged species, charge-separated nitro, 3- and 4-rings, triple bonds, aromatic rings, zwitterions.
HARD_CASES = [
    "C", "N", "O", "C#N", "C1CC1", "C1CCC1", "C1=CC1", "O=C1CC1", "c1ccoc1", "c1cc[nH]c1", "c1ncncn1",
    "C[N+](=O)[O-]", "[C-]#[N+]C", "[NH3+]CC(=O)[O-]", "[N-]=[N+]=NC", "C1C2CC12", "FC(F)(F)C#C",
    "OC12CC1C2", "O=c1cc[nH]cc1", "N#CC1=CC=CN1",
]


def vocabulary_of(smiles: list[str], aromatic_bonds: bool = False) -> Vocabulary:
    graphs = [molecular_graph(parse_smiles(s), aromatic_bonds) for s in smiles]
    return Vocabulary.from_graphs(graphs, max_atoms=9, aromatic_bonds=aromatic_bonds)


@pytest.fixture(scope="module")
def vocab():
    return vocabulary_of(HARD_CASES)


@pytest.fixture(scope="module")
def aromatic_vocab():
    return vocabulary_of(HARD_CASES, aromatic_bonds=True)


def one_hot_probs(tokens, vocab):
    return np.eye(vocab.num_atom_types)[tokens.atoms], np.eye(vocab.num_bond_types)[tokens.bonds]


def one_hot_decode(tokens, vocab):
    return decode_raw(*one_hot_probs(tokens, vocab), vocab)


@pytest.mark.parametrize("aromatic_bonds", [False, True], ids=["kekule", "aromatic"])
@pytest.mark.parametrize("smiles", HARD_CASES)
def test_round_trip_hard_cases(smiles, aromatic_bonds, vocab, aromatic_vocab):
    vocab = aromatic_vocab if aromatic_bonds else vocab
    mol = parse_smiles(smiles)
    tokens = encode(mol, vocab)
    decoded = one_hot_decode(tokens, vocab)
    assert decoded.valid, decoded.failure
    assert canonical_smiles(decoded.mol) == canonical_smiles(mol)
    constrained = decode_constrained(*one_hot_probs(tokens, vocab), vocab)
    assert not constrained.changed and canonical_smiles(constrained.mol) == canonical_smiles(mol)


def test_vocabulary_has_the_charged_types_and_survives_plain_values(vocab):
    assert {("N", 1, 0), ("O", -1, 0), ("N", -1, 0), ("C", -1, 0)} <= set(vocab.atom_types)
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    valences = dict(zip(vocab.labels, vocab.max_valences.tolist()))
    assert valences["C"] == 4 and valences["N+"] == 4 and valences["O-"] == 1 and valences["C-"] == 3


def test_vocabularies_written_before_hydrogen_keys_still_load(vocab):
    old = {"atom_types": [[s, c] for s, c, _ in vocab.atom_types], "bond_types": ["none", "single", "double", "triple"],
           "max_atoms": 9, "tokenizer_version": 1}
    assert Vocabulary.from_dict(old) == vocab
    with pytest.raises(ValueError, match="unsupported bond types"):
        Vocabulary.from_dict({**old, "bond_types": ["none", "single"]})


def test_aromatic_vocabulary_keeps_aromatic_bonds_and_pyrrole_hydrogens(aromatic_vocab):
    assert aromatic_vocab.bond_types == AROMATIC_BONDS and aromatic_vocab.bond_orders[-1] == 1.5
    assert Vocabulary.from_dict(aromatic_vocab.to_dict()) == aromatic_vocab
    tokens = encode(parse_smiles("c1cc[nH]c1"), aromatic_vocab)
    ring = tokens.bonds[np.triu_indices(5, k=1)]
    assert sorted(ring[ring > 0].tolist()) == [4] * 5  # five aromatic bonds, no single or double
    keys = [aromatic_vocab.atom_types[i] for i in tokens.atoms]
    assert keys.count(("N", 0, 1)) == 1 and keys.count(("C", 0, 0)) == 4
    assert dict(zip(aromatic_vocab.labels, aromatic_vocab.max_valences.tolist()))["NH"] == 2
    # pyridine's nitrogen states no hydrogen: it is the plain N type
    pyridine = encode(parse_smiles("c1ccncc1"), aromatic_vocab)
    assert ("N", 0, 0) in [aromatic_vocab.atom_types[i] for i in pyridine.atoms]


def test_aromatic_atom_type_missing_from_the_vocabulary_is_named():
    vocab = vocabulary_of(["c1ccccc1", "CCO", "CN"], aromatic_bonds=True)
    with pytest.raises(OutOfDomain, match=r"atom type NH \(neutral, 1 H on an aromatic ring\) not in vocabulary"):
        encode(parse_smiles("c1cc[nH]c1"), vocab)


# Every bond made aromatic: five aromatic carbons cannot be kekulized; a chain is no ring at all.
# Either way a maximum matching keeps two double bonds (cyclopentadiene, butadiene).
@pytest.mark.parametrize("smiles", ["C1CCCC1", "CCCC"])
def test_constrained_decode_turns_impossible_aromatic_bonds_into_a_valid_molecule(smiles, aromatic_vocab):
    tokens = encode(parse_smiles(smiles), aromatic_vocab)
    atom_probs, bond_probs = one_hot_probs(tokens, aromatic_vocab)
    bond_probs[tokens.bonds > 0] = np.eye(5)[4]
    assert not decode_raw(atom_probs, bond_probs, aromatic_vocab).valid
    constrained = decode_constrained(atom_probs, bond_probs, aromatic_vocab)
    assert constrained.changed
    assert Chem.MolFromSmiles(Chem.MolToSmiles(constrained.mol)) is not None
    assert constrained.mol.GetNumAtoms() == len(tokens.atoms)
    orders = [bond.GetBondTypeAsDouble() for bond in constrained.mol.GetBonds()]
    assert orders.count(2.0) == 2 and len(orders) == len(tokens.bonds[tokens.bonds > 0]) // 2


def test_constrained_decode_gives_no_double_bond_to_a_full_aromatic_atom(aromatic_vocab):
    """Pyrrole with one ring bond lost: [nH] has no valence to spare, so the two double bonds go
    to the four carbons, not to the nitrogen."""
    tokens = encode(parse_smiles("c1cc[nH]c1"), aromatic_vocab)
    atom_probs, bond_probs = one_hot_probs(tokens, aromatic_vocab)
    i, j = np.argwhere(np.triu(tokens.bonds == 4))[0]
    bond_probs[i, j] = bond_probs[j, i] = np.eye(5)[0]  # one aromatic bond dropped: no ring left
    constrained = decode_constrained(atom_probs, bond_probs, aromatic_vocab)
    nitrogen = next(atom for atom in constrained.mol.GetAtoms() if atom.GetSymbol() == "N")
    assert all(bond.GetBondTypeAsDouble() == 1.0 for bond in nitrogen.GetBonds())
    assert nitrogen.GetTotalNumHs() == 1


@pytest.mark.parametrize("vocabulary, smiles", [("vocab", "O=C1N=CC(=O)C1C#N"), ("aromatic_vocab", "Cc1cc[nH]c1C#N")])
def test_encoding_does_not_depend_on_input_atom_order(vocabulary, smiles, request):
    vocab = request.getfixturevalue(vocabulary)
    mol = parse_smiles(smiles)
    reference = encode(mol, vocab)
    rng = random.Random(0)
    for _ in range(10):
        order = list(range(mol.GetNumAtoms()))
        rng.shuffle(order)
        shuffled = Chem.RenumberAtoms(mol, order)
        tokens = encode(shuffled, vocab)
        assert np.array_equal(tokens.atoms, reference.atoms)
        assert np.array_equal(tokens.bonds, reference.bonds)


def test_bonds_are_symmetric_kekulized_and_zero_on_the_diagonal(vocab):
    tokens = encode(parse_smiles("c1ccoc1"), vocab)
    assert np.array_equal(tokens.bonds, tokens.bonds.T)
    assert np.all(np.diag(tokens.bonds) == 0)
    assert set(np.unique(tokens.bonds)) == {0, 1, 2}  # no aromatic bond type: kekulized


@pytest.mark.parametrize(
    "smiles, reason",
    [
        ("CCCl", "element Cl not in vocabulary"),
        ("C[O+](C)C", "atom type O+ (charge +1) not in vocabulary"),
        ("CCCCCCCCCC", "10 heavy atoms > 9"),
        ("CC(=O)[O-].[NH4+]", "2 disconnected fragments (salt or mixture)"),
        ("[CH3]", "1 radical electron(s)"),
        ("[2H]CO", "element H not in vocabulary"),  # RemoveHs keeps an isotope's hydrogen
    ],
)
def test_out_of_domain_reasons(smiles, reason, vocab):
    with pytest.raises(OutOfDomain, match=reason.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        encode(parse_smiles(smiles), vocab)


def test_collate_pads_and_masks(vocab):
    tokens = [encode(parse_smiles(s), vocab) for s in ["C", "C1CC1", "C[N+](=O)[O-]"]]
    batch = collate(tokens, vocab.max_atoms)
    assert batch.atoms.shape == (3, 9) and batch.bonds.shape == (3, 9, 9)
    assert batch.sizes.tolist() == [1, 3, 4]
    x, e = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    assert x.shape == (3, 9, vocab.num_atom_types) and e.shape == (3, 9, 9, vocab.num_bond_types) == (3, 9, 9, 4)
    assert torch.all(x.sum(-1) == batch.mask.float())
    assert torch.all(e.sum(-1) == pair_mask_of(batch.mask).float())
    with pytest.raises(ValueError, match="does not fit"):
        collate(tokens, 2)


@pytest.mark.parametrize("aromatic_bonds", [False, True], ids=["kekule", "aromatic"])
def test_round_trip_on_qm9_sample_with_every_charged_molecule(aromatic_bonds):
    """The full-QM9 round trip is benchmarks/tokenizer_roundtrip.py; here: 2,000 random rows plus
    every molecule that carries a formal charge (the hard part)."""
    smiles = pd.read_csv(shared_file("qm9.csv"))["smiles"].tolist()
    charged = [s for s in smiles if "+" in s or "-" in s]
    sample = random.Random(0).sample(smiles, 2000) + charged
    assert len(charged) > 1000
    mols = [parse_smiles(s) for s in sample]
    assert all(m is not None for m in mols)
    vocab = Vocabulary.from_graphs((molecular_graph(m, aromatic_bonds) for m in mols), aromatic_bonds=aromatic_bonds)
    failures = [
        s for s, m in zip(sample, mols)
        if (d := one_hot_decode(encode(m, vocab), vocab)).mol is None
        or canonical_smiles(d.mol) != canonical_smiles(m)
    ]
    assert failures == []

import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_file
from rdkit import Chem

from molgen.chemistry import canonical_smiles, parse_smiles
from molgen.decode import decode_raw
from molgen.tokenizer import (
    BOND_TYPES,
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


@pytest.fixture(scope="module")
def vocab():
    graphs = [molecular_graph(parse_smiles(s)) for s in HARD_CASES]
    return Vocabulary.from_graphs(graphs, max_atoms=9)


def one_hot_decode(tokens, vocab):
    atom_probs = np.eye(vocab.num_atom_types)[tokens.atoms]
    bond_probs = np.eye(len(BOND_TYPES))[tokens.bonds]
    return decode_raw(atom_probs, bond_probs, vocab)


@pytest.mark.parametrize("smiles", HARD_CASES)
def test_round_trip_hard_cases(smiles, vocab):
    mol = parse_smiles(smiles)
    decoded = one_hot_decode(encode(mol, vocab), vocab)
    assert decoded.valid, decoded.failure
    assert canonical_smiles(decoded.mol) == canonical_smiles(mol)


def test_vocabulary_has_the_charged_types_and_survives_plain_values(vocab):
    assert {("N", 1), ("O", -1), ("N", -1), ("C", -1)} <= set(vocab.atom_types)
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    valences = dict(zip(vocab.labels, vocab.max_valences.tolist()))
    assert valences["C"] == 4 and valences["N+"] == 4 and valences["O-"] == 1 and valences["C-"] == 3


def test_encoding_does_not_depend_on_input_atom_order(vocab):
    mol = parse_smiles("O=C1N=CC(=O)C1C#N")
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
    x, e = batch.one_hot(vocab.num_atom_types)
    assert x.shape == (3, 9, vocab.num_atom_types) and e.shape == (3, 9, 9, 4)
    assert torch.all(x.sum(-1) == batch.mask.float())
    assert torch.all(e.sum(-1) == pair_mask_of(batch.mask).float())
    with pytest.raises(ValueError, match="does not fit"):
        collate(tokens, 2)


def test_round_trip_on_qm9_sample_with_every_charged_molecule():
    """The full-QM9 round trip is benchmarks/tokenizer_roundtrip.py; here: 2,000 random rows plus
    every molecule that carries a formal charge (the hard part)."""
    smiles = pd.read_csv(shared_file("qm9.csv"))["smiles"].tolist()
    charged = [s for s in smiles if "+" in s or "-" in s]
    sample = random.Random(0).sample(smiles, 2000) + charged
    assert len(charged) > 1000
    mols = [parse_smiles(s) for s in sample]
    assert all(m is not None for m in mols)
    vocab = Vocabulary.from_graphs(molecular_graph(m) for m in mols)
    failures = [
        s for s, m in zip(sample, mols)
        if (d := one_hot_decode(encode(m, vocab), vocab)).mol is None
        or canonical_smiles(d.mol) != canonical_smiles(m)
    ]
    assert failures == []

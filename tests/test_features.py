import torch

from molgen.chemistry import parse_smiles
from molgen.model.features import KEKULE_FEATURES, kekule_features
from molgen.tokenizer import Vocabulary, collate, encode, molecular_graph


def aromatic_graphs(smiles_list):
    """Aromatic-vocabulary one-hots of ``smiles_list``, with the vocabulary (valences, bond orders)."""
    graphs = [molecular_graph(parse_smiles(s), aromatic_bonds=True) for s in smiles_list]
    vocab = Vocabulary.from_graphs(graphs, max_atoms=9, aromatic_bonds=True)
    batch = collate([encode(parse_smiles(s), vocab) for s in smiles_list], 9)
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    inputs = (torch.tensor(vocab.max_valences, dtype=torch.float32), torch.tensor(vocab.bond_orders))
    return vocab, x_atoms * batch.mask[..., None], x_bonds, inputs


MATCHING_WEIGHTS = torch.rand(9, 9, generator=torch.Generator().manual_seed(0)).double() + 1.0


def test_kekule_features_are_quiet_on_real_aromatic_molecules():
    smiles = ["c1cc[nH]c1", "c1ccncc1", "c1ccoc1", "c1ccc2[nH]ccc2c1", "Cc1ccc(=O)[nH]c1", "CC"]
    vocab, x_atoms, x_bonds, (valences, orders) = aromatic_graphs(smiles)
    features = kekule_features(x_atoms, x_bonds, valences, orders, MATCHING_WEIGHTS)
    assert features.shape == (len(smiles), 9, KEKULE_FEATURES)
    assert features[..., 1:].sum() == 0  # nothing broken, no aromatic bond off a ring
    # In the rings, c and pyridine-type n need a double bond, [nH] and o do not.
    types, needs = x_atoms[:4].argmax(-1), features[:4, :, 0].bool()
    in_ring = x_bonds[:4, ..., 4].sum(-1) > 0
    for key, expected in [(("C", 0, 0), True), (("N", 0, 0), True), (("N", 0, 1), False), (("O", 0, 0), False)]:
        of_type = (types == vocab.index(key)) & in_ring
        assert of_type.any() and bool((needs[of_type] == expected).all()), key
    # The pyridone's c(=O) has its double bond already; atoms of no ring need none.
    carbonyl_carbon = int(((x_bonds[4, ..., 2].sum(-1) > 0) & (x_bonds[4, ..., 4].sum(-1) == 2)).nonzero()[0])
    assert features[4, carbonyl_carbon, 0] == 0
    assert features[4, :, 0].sum() == 4 and features[5, :, 0].sum() == 0


def test_kekule_features_flag_what_rdkit_cannot_kekulize():
    vocab, x_atoms, x_bonds, (valences, orders) = aromatic_graphs(["c1cc[nH]c1", "C=CC=C", "c1ccncc1"])
    # Pyrrole with its [nH] made a pyridine-type n: five atoms need a double bond, an odd count.
    pyrrole_nitrogen = int((x_atoms[0].argmax(-1) == vocab.index(("N", 0, 1))).nonzero()[0])
    x_atoms[0, pyrrole_nitrogen] = torch.nn.functional.one_hot(
        torch.tensor(vocab.index(("N", 0, 0))), vocab.num_atom_types).float()
    # Butadiene with every bond aromatic: an aromatic chain, on no ring.
    chain = x_bonds[1, :4, :4, 1:].sum(-1) > 0
    x_bonds[1, :4, :4] = torch.where(chain[..., None], torch.nn.functional.one_hot(torch.tensor(4), 5).float(),
                                     x_bonds[1, :4, :4])
    features = kekule_features(x_atoms, x_bonds, valences, orders, MATCHING_WEIGHTS)
    assert features[0, :5, 0].sum() == 5 and features[0, :5, 1].sum() == 5  # all five need one; broken
    assert features[0, pyrrole_nitrogen, 2] == 1  # moving the hydrogen back onto it fixes the ring
    assert features[0, :, 3].sum() == 0  # a ring
    assert features[1, :4, 3].sum() == 4 and features[1, :4, 1].sum() == 0  # off any ring, though matchable
    assert features[:2, 5:].sum() == 0  # padding
    assert features[2, :, 1:].sum() == 0  # pyridine itself is fine

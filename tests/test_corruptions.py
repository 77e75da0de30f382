import pytest
import torch

from molgen.chemistry import parse_smiles
from molgen.decode import decode_raw
from molgen.model import DiScoConfig, DiScoFormer
from molgen.noise import NoiseProcess
from molgen.tokenizer import Vocabulary, collate, encode, molecular_graph
from molgen.training.corruptions import bond_corrupted, ring_atom_swapped
from molgen.training.losses import LossWeights, training_losses


def test_ring_atom_swapped_with_any_atom_breaks_every_aromatic_ring_within_valences():
    # Benzene, toluene (its substituted carbon has no valence to spare for o or [nH]), furan, pyridine
    # and pyrrole can all lose their Kekulé structure to one swap; the chains cannot.
    smiles = ["c1ccccc1", "Cc1ccccc1", "c1ccoc1", "c1ccncc1", "c1cc[nH]c1", "CCO", "C#N", "CC(F)=O"]
    graphs = [molecular_graph(parse_smiles(s), aromatic_bonds=True) for s in smiles]
    vocab = Vocabulary.from_graphs(graphs, max_atoms=9, aromatic_bonds=True)
    swaps = vocab.repair_swaps()
    assert not swaps.diagonal().any() and swaps.sum() == vocab.num_atom_types * (vocab.num_atom_types - 1)
    batch = collate([encode(parse_smiles(s), vocab) for s in smiles], 9)
    model = DiScoFormer(DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences),
                                    bond_orders=vocab.bond_orders, d_model=16, n_layers=1, n_heads=2, d_pair=4, d_ff=32))
    _, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    seen = set()
    for seed in range(20):
        swapped, changed = ring_atom_swapped(model, batch, torch.from_numpy(swaps), 1.0, torch.Generator().manual_seed(seed))
        assert changed.tolist() == [True] * 5 + [False] * 3
        assert (swapped != batch.atoms).sum(1).tolist() == [1] * 5 + [0] * 3
        x_atoms = torch.nn.functional.one_hot(swapped, vocab.num_atom_types).float()
        for i in range(5):  # every copy fails on its ring, none on a valence
            size = int(batch.mask[i].sum())
            assert decode_raw(x_atoms[i, :size].numpy(), x_bonds[i, :size, :size].numpy(), vocab).failure == "kekulize"
            seen.add((i, vocab.labels[int(swapped[i][swapped[i] != batch.atoms[i]])]))
    assert len({label for i, label in seen if i == 0}) > 1  # benzene's carbon becomes o, n or [nH], at random


@pytest.mark.parametrize("aromatic_bonds", [False, True])
def test_bond_corrupted_breaks_a_valence_or_a_bridge_of_each_molecule_that_allows_it(aromatic_bonds):
    # Ethanol has bridges and no saturated atom; the quaternary carbon is saturated and has bridges
    # (either kind), the ring ether's oxygen is saturated and has no bridge; cyclopropane and benzene
    # have neither (a Kekulé ring carbon has a hydrogen left; one with an aromatic bond is not counted
    # for valence); one atom has no bond at all.
    smiles = ["CCO", "CC(C)(C)C", "C1COC1", "C1CC1", "c1ccccc1", "C", "C#N", "CC(=O)N", "Cc1ccncc1O"]
    graphs = [molecular_graph(parse_smiles(s), aromatic_bonds=aromatic_bonds) for s in smiles]
    vocab = Vocabulary.from_graphs(graphs, max_atoms=9, aromatic_bonds=aromatic_bonds)
    batch = collate([encode(parse_smiles(s), vocab) for s in smiles], 9)
    model = DiScoFormer(DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences),
                                    bond_orders=vocab.bond_orders, d_model=16, n_layers=1, n_heads=2, d_pair=4, d_ff=32))
    allowed = [True, True, True, False, False, False, True, True, True]
    kinds = set()
    for seed in range(20):
        bonds, changed = bond_corrupted(model, batch, 1.0, torch.Generator().manual_seed(seed))
        assert changed.tolist() == allowed
        differs = torch.triu(bonds != batch.bonds, diagonal=1)
        assert differs.flatten(1).sum(1).tolist() == [int(a) for a in allowed]
        assert torch.equal(bonds, bonds.transpose(1, 2))
        for i in range(len(smiles)):
            if not allowed[i]:
                continue
            size = int(batch.mask[i].sum())
            x_atoms = torch.nn.functional.one_hot(batch.atoms[i, :size], vocab.num_atom_types).float()
            x_bonds = torch.nn.functional.one_hot(bonds[i, :size, :size], vocab.num_bond_types).float()
            failure = decode_raw(x_atoms.numpy(), x_bonds.numpy(), vocab).failure
            removed = bool((bonds[i][differs[i]] == 0).all())
            # A removed bond always disconnects; an added or raised one always exceeds a valence.
            assert failure == ("disconnected" if removed else "valence"), (smiles[i], failure)
            kinds.add((smiles[i], failure))
    assert ("CCO", "valence") not in kinds and ("CC(C)(C)C", "valence") in kinds and ("CC(C)(C)C", "disconnected") in kinds
    _, changed = bond_corrupted(model, batch, 0.0, torch.Generator().manual_seed(0))
    assert not changed.any()

    # In the loss the corrupted states only feed the model: the targets stay the real molecules.
    dist = torch.zeros(len(smiles), dtype=torch.long)
    size_log_probs = torch.full((len(smiles), 10), -2.3)

    def losses(**weights):
        return training_losses(model, batch, dist, NoiseProcess(), size_log_probs,
                               LossWeights(nll_molecules=2, nll_samples=2, **weights), torch.Generator().manual_seed(0))

    for rate in (0.0, 1.0):
        repaired = losses(bond_repair_share=1.0, self_conditioning_rate=rate)
        assert all(torch.isfinite(v) for v in repaired.values())
        assert repaired["score"] != losses(self_conditioning_rate=rate)["score"]

import numpy as np
import pytest
import torch
from conftest import example_molecules
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_adj

import molgen
from molgen.chemistry import parse_smiles
from molgen.pyg import MoleculeGraphs
from molgen.tokenizer import Vocabulary, collate, encode, molecular_graph


@pytest.fixture(scope="module")
def encoded():
    smiles = example_molecules().tolist()[:300] + ["C", "CC", "c1ccccc1"]
    mols = [parse_smiles(s) for s in smiles]
    vocab = Vocabulary.from_graphs([molecular_graph(m, aromatic_bonds=True) for m in mols], max_atoms=12,
                                   aromatic_bonds=True)
    tokens = [encode(m, vocab) for m in mols]
    return vocab, tokens, collate(tokens, vocab.max_atoms)


def test_graphs_hold_the_same_molecules_as_the_dense_arrays_in_a_fraction_of_the_bytes(encoded):
    vocab, tokens, dense = encoded
    graphs = MoleculeGraphs.from_molecules([(t.atoms, t.bonds) for t in tokens])
    same = MoleculeGraphs.from_dense(dense.atoms.numpy().astype(np.int8), dense.bonds.numpy().astype(np.int8),
                                     dense.sizes.numpy())
    assert all(np.array_equal(graphs.arrays()[name], array) for name, array in same.arrays().items())
    assert len(graphs) == len(tokens) and graphs.sizes.tolist() == [t.num_atoms for t in tokens]
    rows = np.array([300, 5, 0, 301, 17])
    batch = graphs.dense(rows, vocab.max_atoms)
    assert torch.equal(batch.atoms, dense.atoms[rows]) and torch.equal(batch.bonds, dense.bonds[rows])
    assert torch.equal(batch.mask, dense.mask[rows])
    # Without a width, the batch is padded to its largest molecule only.
    tight = graphs.dense(rows)
    width = int(graphs.sizes[rows].max())
    assert tight.atoms.shape == (5, width) and torch.equal(tight.bonds, dense.bonds[rows][:, :width, :width])
    dense_bytes = len(graphs) * (32 + 32 * 32)  # int8 arrays with room for 32 atoms, as drug-like sets need
    assert graphs.nbytes < dense_bytes / 5


def test_each_molecule_is_a_pyg_data_with_bonds_in_both_directions(encoded):
    vocab, tokens, dense = encoded
    graphs = MoleculeGraphs.from_molecules([(t.atoms, t.bonds) for t in tokens])
    benzene = graphs[len(tokens) - 1]
    assert benzene.num_nodes == 6 and benzene.edge_index.shape == (2, 12)
    assert set(benzene.edge_attr.tolist()) == {vocab.bond_types.index("aromatic")}
    # PyG's own batching and densifying give the model's input back.
    batch = Batch.from_data_list([graphs[i] for i in range(10)])
    adjacency = to_dense_adj(batch.edge_index, batch.batch, batch.edge_attr, max_num_nodes=vocab.max_atoms)
    assert torch.equal(adjacency.long(), dense.bonds[:10])


def test_concat_renumbers_atom_types_onto_a_shared_vocabulary(encoded):
    _, tokens, dense = encoded
    graphs = MoleculeGraphs.from_molecules([(t.atoms, t.bonds) for t in tokens[:4]])
    shifted = np.arange(1, 40, dtype=np.int8)  # old id k -> k + 1
    both = MoleculeGraphs.concat([graphs, graphs], [None, shifted])
    assert len(both) == 8 and np.array_equal(both.sizes, np.tile(graphs.sizes, 2))
    assert torch.equal(both[5].x, graphs[1].x + 1) and torch.equal(both[5].edge_index, graphs[1].edge_index)
    assert torch.equal(both.dense(np.array([6]), 12).bonds, dense.bonds[[2]])


def test_to_pyg_gives_every_row_and_model_score_reads_the_graphs():
    model = molgen.load()
    rows = ["CCO", "c1ccc(O)cc1", "nope", "CCCl"]
    graphs = molgen.to_pyg(rows, model)
    assert [g.status for g in graphs] == ["ok", "ok", "invalid_smiles", "out_of_domain"]
    assert graphs[3].reason == "element Cl not in vocabulary" and graphs[2].num_nodes == 0
    from_graphs, from_smiles = model.score(graphs), model.score(rows)
    np.testing.assert_allclose(from_graphs["log_density"], from_smiles["log_density"], rtol=1e-6)
    assert from_graphs["status"].tolist() == from_smiles["status"].tolist()
    # A graph a user built by hand that is no molecular graph is a row with a reason, not a crash.
    one_way = graphs[0].clone()
    one_way.edge_index, one_way.edge_attr = one_way.edge_index[:, :1], one_way.edge_attr[:1]
    foreign = graphs[1].clone()
    foreign.x = foreign.x + 100
    scored = model.score([one_way, foreign, graphs[0]])
    assert scored["status"].tolist() == ["invalid_molecule", "invalid_molecule", "ok"]
    assert "both directions" in scored["reason"][0] and "atom-type ids must lie in" in scored["reason"][1]

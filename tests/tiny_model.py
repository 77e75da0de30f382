"""A tiny DiScoFormer on eight small molecules, shared by the model, likelihood and checkpoint tests
(the ``tiny`` fixture of conftest.py), and the inputs those tests feed it."""

import torch

from molgen.chemistry import parse_smiles
from molgen.model import DiScoConfig, DiScoFormer
from molgen.noise import NoiseProcess, noised
from molgen.tokenizer import Vocabulary, collate, encode, molecular_graph


SMILES = ["C", "CO", "C#N", "C[N+](=O)[O-]", "c1ccoc1", "OC1CC1", "CC(=O)NC", "N#CC(F)F"]


def tiny_model():
    mols = [parse_smiles(s) for s in SMILES]
    vocab = Vocabulary.from_graphs((molecular_graph(m) for m in mols), max_atoms=9)
    batch = collate([encode(m, vocab) for m in mols], vocab.max_atoms)
    config = DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences),
                         num_distributions=2, d_model=32, d_pair=8, n_layers=2, n_heads=4, d_ff=64)
    torch.manual_seed(0)
    return vocab, batch, DiScoFormer(config).eval()


def noisy_inputs(batch, vocab, t, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    noise = NoiseProcess()
    z_atoms, z_bonds, _, _ = noised(x_atoms, x_bonds, batch.mask, t, noise, generator)
    return z_atoms, z_bonds, noise


def clean_inputs(batch, vocab):
    """Model inputs of the clean molecules at t = 0 under distribution 0 (x_atoms, x_bonds, mask,
    atom and bond log-SNRs, dist), and the noise process."""
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    noise = NoiseProcess()
    t = torch.zeros(batch.mask.shape[0])
    dist = torch.zeros_like(t, dtype=torch.long)
    return (x_atoms, x_bonds, batch.mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist), noise

"""NSPDK MMD: the neighbourhood subgraph pairwise distance kernel (Costa & De Grave 2010) on RDKit
molecular graphs, and the MMD between two sets under it, as in the GraphAF / GDSS QM9 tables.

A feature is a pair of rooted neighbourhood subgraphs (radius r around u, radius r around v) whose
roots lie d bonds apart, for every r <= ``MAX_RADIUS`` and d <= ``MAX_DISTANCE``. Node labels are
elements, edge labels bond orders (aromatic its own order). A subgraph is identified by an
invariant hash: every node's (label, distance to the root, sorted (distance, label) to every other
node of the ball) and every edge's pair of node invariants with its order. Each (r, d) block of a
molecule's feature counts is scaled to unit norm, then the whole vector (EDeN's normalisation), so
the kernel of a molecule with itself is 1. With that linear kernel on explicit features,
MMD^2 = mean K_XX + mean K_YY - 2 mean K_XY = ||mean phi(X) - mean phi(Y)||^2 (the biased
estimate the published tables report). EDeN hashes differently, so values are comparable in
magnitude with the published ones, not to the last digit.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from rdkit import Chem

MAX_RADIUS = 3
MAX_DISTANCE = 4


def _ball_hashes(mol: Chem.Mol, distances, labels: list[str]) -> dict[tuple[int, int], int]:
    """(root, radius) -> invariant hash of the rooted neighbourhood subgraph."""
    n = mol.GetNumAtoms()
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondTypeAsDouble()) for b in mol.GetBonds()]
    hashes = {}
    for root in range(n):
        for radius in range(MAX_RADIUS + 1):
            ball = [w for w in range(n) if distances[root][w] <= radius]
            members = set(ball)
            node_sig = {
                w: (labels[w], int(distances[root][w]),
                    tuple(sorted((int(distances[w][x]), labels[x]) for x in ball if x != w)))
                for w in ball
            }
            edges = sorted(
                (tuple(sorted((node_sig[a], node_sig[b]))), order)
                for a, b, order in bonds if a in members and b in members
            )
            hashes[root, radius] = hash((tuple(sorted(node_sig.values())), tuple(edges)))
    return hashes


def nspdk_features(mol: Chem.Mol) -> dict:
    """Sparse, normalised NSPDK feature vector of one molecule: {(r, d, hash_a, hash_b): weight}."""
    n = mol.GetNumAtoms()
    distances = Chem.GetDistanceMatrix(mol)
    labels = [atom.GetSymbol() for atom in mol.GetAtoms()]
    hashes = _ball_hashes(mol, distances, labels)
    counts: Counter = Counter()
    for u in range(n):
        for v in range(u, n):
            d = distances[u][v]
            if d > MAX_DISTANCE:
                continue
            for radius in range(MAX_RADIUS + 1):
                a, b = sorted((hashes[u, radius], hashes[v, radius]))
                counts[radius, int(d), a, b] += 1
    block_norms: dict = defaultdict(float)
    for (radius, d, _, _), count in counts.items():
        block_norms[radius, d] += count * count
    features = {key: count / math.sqrt(block_norms[key[:2]]) for key, count in counts.items()}
    total = math.sqrt(sum(value * value for value in features.values()))
    return {key: value / total for key, value in features.items()} if total else features


def mean_embedding(mols: list[Chem.Mol]) -> dict:
    mean: dict = defaultdict(float)
    for mol in mols:
        for key, value in nspdk_features(mol).items():
            mean[key] += value / len(mols)
    return mean


def nspdk_mmd(mols_a: list[Chem.Mol], mols_b: list[Chem.Mol]) -> float:
    """Squared MMD between two sets of molecules under the NSPDK (0 for identical sets)."""
    mean_a, mean_b = mean_embedding(mols_a), mean_embedding(mols_b)
    keys = set(mean_a) | set(mean_b)
    return float(sum((mean_a.get(key, 0.0) - mean_b.get(key, 0.0)) ** 2 for key in keys))


def nspdk_kernel(mol_a: Chem.Mol, mol_b: Chem.Mol) -> float:
    """The normalised kernel value of two molecules (1 for a molecule with itself)."""
    features_a, features_b = nspdk_features(mol_a), nspdk_features(mol_b)
    return float(sum(value * features_b.get(key, 0.0) for key, value in features_a.items()))

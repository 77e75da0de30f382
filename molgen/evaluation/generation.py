"""Generation metrics over lists of SMILES, so that any model's samples can be scored the same way.

Definitions follow the published QM9 tables (GDSS, which uses MOSES's code): validity is the share
of samples RDKit accepts; uniqueness the share of valid samples that are distinct canonical
SMILES; novelty the share of unique valid samples not in the training set; FCD (``fcd`` package,
ChemNet bundled, offline) and NSPDK MMD against the test split over the valid samples. Beside
them: GuacaMol's KL-divergence benchmark over RDKit descriptors, and internal diversity (MOSES
IntDiv1: one minus the mean pairwise Tanimoto similarity of Morgan fingerprints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import Descriptors, rdFingerprintGenerator

from molgen.chemistry import canonical_smiles, parse_smiles
from molgen.evaluation.nspdk import nspdk_mmd

# GuacaMol's distribution-learning descriptors: name -> (function, discrete?).
KL_DESCRIPTORS = {
    "BertzCT": (Descriptors.BertzCT, False),
    "MolLogP": (Descriptors.MolLogP, False),
    "MolWt": (Descriptors.MolWt, False),
    "TPSA": (Descriptors.TPSA, False),
    "NumHAcceptors": (Descriptors.NumHAcceptors, True),
    "NumHDonors": (Descriptors.NumHDonors, True),
    "NumRotatableBonds": (Descriptors.NumRotatableBonds, True),
    "NumAliphaticRings": (Descriptors.NumAliphaticRings, True),
    "NumAromaticRings": (Descriptors.NumAromaticRings, True),
}
KDE_GRID = 1000


def canonicalize(smiles: list[str | None]) -> list[str | None]:
    """Canonical SMILES per input, None where RDKit rejects it."""
    out = []
    for text in smiles:
        mol = parse_smiles(text)
        out.append(canonical_smiles(mol) if mol is not None else None)
    return out


def validity(smiles: list[str | None]) -> float:
    return sum(s is not None for s in canonicalize(smiles)) / max(len(smiles), 1)


def uniqueness(canonical: list[str | None]) -> float:
    """Distinct valid molecules over valid molecules (``canonical`` from :func:`canonicalize`)."""
    valid = [s for s in canonical if s is not None]
    return len(set(valid)) / max(len(valid), 1)


def novelty(canonical: list[str | None], train: set[str]) -> float:
    """Share of distinct valid molecules absent from ``train`` (canonical SMILES)."""
    distinct = {s for s in canonical if s is not None}
    return sum(s not in train for s in distinct) / max(len(distinct), 1)


def fcd(smiles_a: list[str], smiles_b: list[str]) -> float:
    """Fréchet ChemNet distance between two sets of valid SMILES."""
    from fcd import get_fcd, load_ref_model

    return float(get_fcd(smiles_a, smiles_b, load_ref_model()))


def chemnet_activations(smiles: list[str]) -> np.ndarray:
    """ChemNet's penultimate activations, one row per SMILES (what FCD compares)."""
    from fcd import get_predictions, load_ref_model

    return get_predictions(load_ref_model(), smiles)


def activation_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return activations.mean(0), np.cov(activations.T)


def chemnet_statistics(smiles: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ChemNet's penultimate activations over ``smiles`` (FCD's inputs)."""
    return activation_statistics(chemnet_activations(smiles))


def frechet_distance_of_statistics(statistics: tuple[np.ndarray, np.ndarray],
                                   reference: tuple[np.ndarray, np.ndarray]) -> float:
    from fcd import calculate_frechet_distance

    return float(calculate_frechet_distance(mu1=statistics[0], sigma1=statistics[1], mu2=reference[0],
                                            sigma2=reference[1]))


def frechet_distance(smiles: list[str], reference_mean: np.ndarray, reference_covariance: np.ndarray) -> float:
    return frechet_distance_of_statistics(chemnet_statistics(smiles), (reference_mean, reference_covariance))


def morgan_fingerprints(mols: list[Chem.Mol], radius: int = 2, bits: int = 1024) -> list:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    return [generator.GetFingerprint(mol) for mol in mols]


@dataclass
class SimilarityStats:
    mean_pairwise: float  # over all pairs i != j
    nearest_neighbour: np.ndarray  # (n,) each molecule's highest similarity to another one


def similarity_stats(fingerprints: list) -> SimilarityStats:
    """Pairwise Tanimoto statistics of one set in one pass (n^2 / 2 comparisons)."""
    n = len(fingerprints)
    nearest = np.zeros(n)
    total = 0.0
    for i in range(n - 1):
        sims = np.asarray(DataStructs.BulkTanimotoSimilarity(fingerprints[i], fingerprints[i + 1 :]))
        total += sims.sum()
        nearest[i] = max(nearest[i], sims.max())
        np.maximum(nearest[i + 1 :], sims, out=nearest[i + 1 :])
    pairs = n * (n - 1) / 2
    return SimilarityStats(total / pairs if pairs else float("nan"), nearest)


def internal_diversity(mols: list[Chem.Mol]) -> float:
    """MOSES IntDiv1: 1 - mean Tanimoto similarity over distinct pairs (Morgan r=2, 1024 bits)."""
    return 1.0 - similarity_stats(morgan_fingerprints(mols)).mean_pairwise


def gaussian_kde_on_grid(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density with Scott's bandwidth (as scipy's default), evaluated on ``grid``."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    bandwidth = max(spread * len(values) ** (-1 / 5), 1e-6)
    density = np.zeros_like(grid)
    for start in range(0, len(values), 2000):  # bounded memory: 2000 x grid at a time
        part = values[start : start + 2000]
        density += np.exp(-0.5 * ((grid[:, None] - part[None, :]) / bandwidth) ** 2).sum(1)
    return density / (len(values) * bandwidth * math.sqrt(2 * math.pi))


def kl_divergence(reference: np.ndarray, sampled: np.ndarray, discrete: bool) -> float:
    """KL(reference || sampled) of one descriptor, as GuacaMol computes it: Gaussian KDEs on a
    shared 1000-point grid for continuous descriptors, histograms for discrete ones (here over
    shared integer bins, where GuacaMol bins each set on its own range)."""
    if discrete:
        low = int(min(reference.min(), sampled.min()))
        high = int(max(reference.max(), sampled.max()))
        bins = np.arange(low, high + 2) - 0.5
        p = np.histogram(reference, bins=bins)[0].astype(np.float64)
        q = np.histogram(sampled, bins=bins)[0].astype(np.float64)
    else:
        grid = np.linspace(min(reference.min(), sampled.min()), max(reference.max(), sampled.max()), KDE_GRID)
        p, q = gaussian_kde_on_grid(reference, grid), gaussian_kde_on_grid(sampled, grid)
    p, q = p + 1e-10, q + 1e-10
    p, q = p / p.sum(), q / q.sum()
    return float((p * np.log(p / q)).sum())


def descriptor_table(mols: list[Chem.Mol]) -> dict[str, np.ndarray]:
    return {name: np.array([function(mol) for mol in mols], dtype=np.float64)
            for name, (function, _) in KL_DESCRIPTORS.items()}


def kl_benchmark(
    reference: list[Chem.Mol], sampled: list[Chem.Mol], sampled_similarity: SimilarityStats | None = None
) -> dict:
    """GuacaMol's KL-divergence benchmark: per-descriptor KL(reference || sampled) over the nine
    RDKit descriptors and the nearest-neighbour similarity within each set, and the score
    ``mean(exp(-KL))`` (1 is a perfect match). ``sampled_similarity``: the sampled set's
    :func:`similarity_stats`, when the caller has them already (they cost n^2 / 2 comparisons)."""
    ref_table, sample_table = descriptor_table(reference), descriptor_table(sampled)
    kls = {name: kl_divergence(ref_table[name], sample_table[name], discrete)
           for name, (_, discrete) in KL_DESCRIPTORS.items()}
    ref_nn = similarity_stats(morgan_fingerprints(reference)).nearest_neighbour
    sample_nn = (sampled_similarity or similarity_stats(morgan_fingerprints(sampled))).nearest_neighbour
    kls["internal_similarity"] = kl_divergence(ref_nn, sample_nn, discrete=False)
    return {"kl": kls, "score": float(np.mean([math.exp(-value) for value in kls.values()]))}


def generation_metrics(
    samples: list[str | None],
    test: list[str],
    train: set[str] | None = None,
    raw_valid: list[bool] | None = None,
    with_fcd: bool = True,
    with_nspdk: bool = True,
    with_kl: bool = True,
) -> dict:
    """Every generation metric of ``samples`` against the ``test`` SMILES (and ``train``, canonical,
    for novelty). ``raw_valid``: per sample, whether the graph was valid before any correction (for
    a generator that repairs its output); without it, validity is the share RDKit accepts."""
    canonical = canonicalize(samples)
    valid = [s for s in canonical if s is not None]
    valid_mols = [Chem.MolFromSmiles(s) for s in valid]
    distinct_mols = [Chem.MolFromSmiles(s) for s in dict.fromkeys(valid)]
    test_canonical = [s for s in canonicalize(test) if s is not None]
    sample_similarity = similarity_stats(morgan_fingerprints(distinct_mols)) if len(distinct_mols) > 1 else None
    metrics = {
        "samples": len(samples),
        "validity": len(valid) / max(len(samples), 1),
        "validity_without_correction": (float(np.mean(raw_valid)) if raw_valid is not None
                                        else len(valid) / max(len(samples), 1)),
        "uniqueness": uniqueness(canonical),
        "novelty": novelty(canonical, train) if train is not None else None,
        "internal_diversity": 1.0 - sample_similarity.mean_pairwise if sample_similarity else None,
    }
    if with_fcd:
        metrics["fcd_test"] = fcd(valid, test_canonical) if len(valid) > 1 else None
    if with_nspdk:
        test_mols = [Chem.MolFromSmiles(s) for s in test_canonical]
        metrics["nspdk_mmd_test"] = nspdk_mmd(valid_mols, test_mols) if valid_mols else None
    if with_kl:
        # Equal-sized sets: the nearest-neighbour similarity inside a set grows with its size.
        reference = list(dict.fromkeys(test_canonical))
        chosen = np.random.default_rng(0).permutation(len(reference))[: len(distinct_mols)]
        test_mols = [Chem.MolFromSmiles(reference[i]) for i in np.sort(chosen)]
        metrics["kl_test"] = kl_benchmark(test_mols, distinct_mols, sample_similarity) if sample_similarity else None
    return metrics

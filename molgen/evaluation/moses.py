"""The MOSES benchmark's metrics (Polykovskiy et al. 2020), computed as its reference code does.

Over the generated SMILES: ``valid`` (the share RDKit accepts; molgen also reports validity before
its constrained decoding), then over the valid ones with duplicates: ``unique@k`` (distinct among the
first k), FCD, SNN (mean Tanimoto similarity of each molecule's nearest test neighbour, Morgan r=2,
1024 bits), Frag and Scaf (cosine similarity of BRICS-fragment and Bemis-Murcko-scaffold counts
against the test set's; scaffolds of at least two rings), IntDiv and IntDiv2 (one minus the mean,
and the root mean square, Tanimoto similarity over all ordered pairs, self-pairs included),
``filters`` (MCF and PAINS SMARTS, the benchmark's elements, no charge, no ring of 8 or more atoms)
and novelty (distinct molecules not among the training SMILES).

The reference statistics of a test set (ChemNet activations, fingerprints, fragment and scaffold
counts) take minutes for MOSES's 176,074 molecules and are cached beside the prepared data.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem.Scaffolds import MurckoScaffold

from molgen.evaluation.generation import canonicalize, chemnet_statistics, frechet_distance, morgan_fingerprints

FILTERS_DIR = Path(__file__).resolve().parent / "data"
ALLOWED_ELEMENTS = {"C", "N", "S", "O", "F", "Cl", "Br", "H"}
UNIQUE_AT = (1000, 10_000)


def _filter_patterns() -> list[Chem.Mol]:
    mcf = pd.read_csv(FILTERS_DIR / "mcf.csv")["smarts"].tolist()
    pains = pd.read_csv(FILTERS_DIR / "wehi_pains.csv", names=["smarts", "names"])["smarts"].tolist()
    return [Chem.MolFromSmarts(smarts) for smarts in mcf + pains]


_PATTERNS: list[Chem.Mol] | None = None


def passes_filters(mol: Chem.Mol) -> bool:
    """MOSES's ``mol_passes_filters``: no ring of 8+ atoms, no charge, only its elements, no MCF or
    PAINS match (on the molecule with explicit hydrogens, as the PAINS SMARTS name them)."""
    global _PATTERNS
    if _PATTERNS is None:
        _PATTERNS = _filter_patterns()
    if any(len(ring) >= 8 for ring in mol.GetRingInfo().AtomRings()):
        return False
    if any(atom.GetFormalCharge() != 0 or atom.GetSymbol() not in ALLOWED_ELEMENTS for atom in mol.GetAtoms()):
        return False
    with_hydrogens = Chem.AddHs(mol)
    return not any(with_hydrogens.HasSubstructMatch(pattern) for pattern in _PATTERNS)


def fragments(mols: list[Chem.Mol]) -> Counter:
    """BRICS fragments (SMILES with labelled dummy atoms) over ``mols``, counted."""
    counts: Counter = Counter()
    for mol in mols:
        counts.update(Chem.MolToSmiles(AllChem.FragmentOnBRICSBonds(mol)).split("."))
    return counts


def scaffolds(mols: list[Chem.Mol], min_rings: int = 2) -> Counter:
    """Bemis-Murcko scaffolds with at least ``min_rings`` rings over ``mols``, counted."""
    counts: Counter = Counter()
    for mol in mols:
        try:
            scaffold = MurckoScaffold.GetScaffoldForMol(mol)
        except (ValueError, RuntimeError):
            continue
        text = Chem.MolToSmiles(scaffold)
        if text and scaffold.GetRingInfo().NumRings() >= min_rings:
            counts[text] += 1
    return counts


def cosine_similarity(reference: Counter, generated: Counter) -> float | None:
    if not reference or not generated:
        return None
    keys = list(set(reference) | set(generated))
    a = np.array([reference.get(key, 0) for key in keys], dtype=np.float64)
    b = np.array([generated.get(key, 0) for key in keys], dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def fingerprint_matrix(mols: list[Chem.Mol]) -> np.ndarray:
    """(n, 1024) uint8 Morgan bits (radius 2), as MOSES's ``fingerprints(fp_type='morgan')``."""
    out = np.zeros((len(mols), 1024), dtype=np.uint8)
    for row, fingerprint in enumerate(morgan_fingerprints(mols)):
        out[row, list(fingerprint.GetOnBits())] = 1
    return out


def tanimoto_aggregate(reference: np.ndarray, generated: np.ndarray, aggregate: str, power: int = 1,
                       block: int = 4096) -> np.ndarray:
    """Per generated fingerprint, the max (``aggregate='max'``) or the power mean (``'mean'``) of its
    Tanimoto similarities to every reference fingerprint, in blocks (bounded memory)."""
    result = np.zeros(len(generated))
    generated_t = torch.from_numpy(generated).float()
    for start in range(0, len(reference), block):
        stock = torch.from_numpy(reference[start:start + block]).float()
        for begin in range(0, len(generated), block):
            gen = generated_t[begin:begin + block]
            common = stock @ gen.T
            similarity = common / (stock.sum(1, keepdim=True) + gen.sum(1)[None, :] - common)
            similarity = torch.nan_to_num(similarity, nan=1.0).numpy()  # two empty fingerprints: equal
            part = slice(begin, begin + len(gen))
            if aggregate == "max":
                result[part] = np.maximum(result[part], similarity.max(0))
            else:
                result[part] += (similarity ** power).sum(0)
    if aggregate == "mean":
        result = (result / len(reference)) ** (1 / power)
    return result


@dataclass
class ReferenceStatistics:
    """What the metrics need of a reference set (MOSES Test): ChemNet mean and covariance,
    fingerprints, fragment and scaffold counts."""

    chemnet_mean: np.ndarray
    chemnet_covariance: np.ndarray
    fingerprints: np.ndarray
    fragments: Counter
    scaffolds: Counter

    @classmethod
    def of(cls, smiles: list[str]) -> "ReferenceStatistics":
        canonical = [s for s in canonicalize(smiles) if s is not None]
        mols = [Chem.MolFromSmiles(s) for s in canonical]
        return cls(*chemnet_statistics(canonical), fingerprint_matrix(mols), fragments(mols), scaffolds(mols))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        counts = json.dumps({"fragments": self.fragments, "scaffolds": self.scaffolds})
        np.savez(path, chemnet_mean=self.chemnet_mean, chemnet_covariance=self.chemnet_covariance,
                 fingerprints=np.packbits(self.fingerprints, axis=1), counts=np.array(counts))

    @classmethod
    def load(cls, path: Path) -> "ReferenceStatistics":
        with np.load(path, allow_pickle=False) as arrays:
            counts = json.loads(str(arrays["counts"]))
            return cls(arrays["chemnet_mean"], arrays["chemnet_covariance"], np.unpackbits(arrays["fingerprints"], axis=1),
                       Counter(counts["fragments"]), Counter(counts["scaffolds"]))


def cached_reference(path: Path, smiles_column: str | None = None) -> ReferenceStatistics:
    """The statistics of the molecule file ``path``, computed once and cached by its bytes."""
    from molgen.data import cache_dir
    from molgen.io import read_molecules

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / "reference" / f"{path.name.split('.')[0]}-{digest}.npz"
    if cached.is_file():
        return ReferenceStatistics.load(cached)
    smiles = [s for chunk in read_molecules(path, smiles_column) for s in chunk.smiles if s]
    statistics = ReferenceStatistics.of(smiles)
    statistics.save(cached)
    return statistics


def moses_metrics(samples: list[str | None], test: ReferenceStatistics, train: set[str],
                  raw_valid: list[bool] | None = None, with_fcd: bool = True) -> dict:
    """MOSES's metrics of ``samples`` against ``test`` and the canonical ``train`` SMILES."""
    canonical = canonicalize(samples)
    valid = [s for s in canonical if s is not None]
    mols = [Chem.MolFromSmiles(s) for s in valid]
    metrics: dict = {"samples": len(samples), "valid": len(valid) / max(len(samples), 1)}
    if raw_valid is not None:
        metrics["valid_without_correction"] = float(np.mean(raw_valid))
    for k in UNIQUE_AT:
        if len(valid) >= k:
            metrics[f"unique@{k}"] = len(set(valid[:k])) / k
    if not mols:
        return metrics
    fingerprints = fingerprint_matrix(mols)
    if with_fcd:
        metrics["fcd_test"] = frechet_distance(valid, test.chemnet_mean, test.chemnet_covariance)
    metrics["snn_test"] = float(tanimoto_aggregate(test.fingerprints, fingerprints, "max").mean())
    metrics["frag_test"] = cosine_similarity(test.fragments, fragments(mols))
    metrics["scaf_test"] = cosine_similarity(test.scaffolds, scaffolds(mols))
    metrics["int_div"] = float(1 - tanimoto_aggregate(fingerprints, fingerprints, "mean").mean())
    metrics["int_div2"] = float(1 - tanimoto_aggregate(fingerprints, fingerprints, "mean", power=2).mean())
    metrics["filters"] = float(np.mean([passes_filters(mol) for mol in mols]))
    distinct = set(valid)
    metrics["novelty"] = sum(s not in train for s in distinct) / len(distinct)
    return metrics


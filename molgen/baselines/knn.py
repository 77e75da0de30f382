"""k-nearest-neighbour Tanimoto similarity to a training set: the standard applicability-domain
score. A molecule scores the mean Tanimoto similarity (Morgan radius 2, 2048 bits) of its ``k``
most similar training molecules; higher means more like the training data."""

from __future__ import annotations

import numpy as np
from rdkit import DataStructs
from rdkit.Chem import rdFingerprintGenerator

from molgen.chemistry import parse_smiles


class TanimotoKNN:
    def __init__(self, train_smiles: list[str], k: int = 5, radius: int = 2, bits: int = 2048):
        self.k = k
        self._generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
        self.train = [fp for fp in map(self.fingerprint, train_smiles) if fp is not None]
        if len(self.train) < k:
            raise ValueError(f"need at least k={k} valid training molecules, got {len(self.train)}")

    def fingerprint(self, smiles: str):
        mol = parse_smiles(smiles)
        return None if mol is None else self._generator.GetFingerprint(mol)

    def score(self, smiles: list[str | None]) -> np.ndarray:
        """Mean similarity to the k nearest training molecules; NaN where RDKit rejects the SMILES."""
        out = np.full(len(smiles), np.nan)
        for row, text in enumerate(smiles):
            fp = self.fingerprint(text)
            if fp is None:
                continue
            sims = np.asarray(DataStructs.BulkTanimotoSimilarity(fp, self.train))
            out[row] = np.partition(sims, -self.k)[-self.k :].mean()
        return out

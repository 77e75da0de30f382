"""Training-set membership without the training set: sorted 63-bit hashes of canonical SMILES."""

from __future__ import annotations

import hashlib

import numpy as np


def smiles_hash(smiles: str) -> int:
    """Stable 63-bit hash of a canonical SMILES (blake2b, independent of Python's hash seed)."""
    return int.from_bytes(hashlib.blake2b(smiles.encode(), digest_size=8).digest(), "little") >> 1


def is_novel(smiles: list[str], train_hashes: np.ndarray) -> np.ndarray:
    """True where a canonical SMILES is not in the training set the hashes summarise."""
    hashes = np.array([smiles_hash(s) for s in smiles], dtype=np.int64)
    return ~np.isin(hashes, train_hashes)

"""Datasets: locating QM9 (a given file or a cached download), splits, and prepared graphs.

Preparing reads a SMILES source, encodes every row with the tokenizer (each row gets a status), builds
the vocabulary from the training split, and caches the molecules as collated torch-geometric graphs
(:mod:`molgen.pyg`) under a key derived from the source bytes and the options, so a second run loads
in about a second (QM9) or seconds (MOSES's 1.6 million molecules).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from molgen.chemistry import canonical_smiles, parse_smiles_with_reason
from molgen.io import InputError, read_molecules
from molgen.workers import process_pool
from molgen.tokenizer import (
    TOKENIZER_VERSION,
    GraphBatch,
    MolecularGraph,
    OutOfDomain,
    Vocabulary,
    domain_problem,
    molecular_graph,
)
from molgen.pyg import ARRAYS, MoleculeGraphs

QM9_ROWS = 133_885
QM9_CSV_URL = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/qm9.csv"
QM9_TEST_IDX_URL = "https://raw.githubusercontent.com/divelab/DIG_storage/main/ggraph/valid_idx_qm9.json"
SPLITS = ("train", "val", "test")


def cache_dir() -> Path:
    """``$MOLGEN_CACHE``, else ``$XDG_CACHE_HOME/molgen``, else ``~/.cache/molgen``."""
    if os.environ.get("MOLGEN_CACHE"):
        return Path(os.environ["MOLGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "molgen"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


def fetch_url(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` (atomically)."""
    with urllib.request.urlopen(url, timeout=120) as response:
        atomic_write_bytes(destination, response.read())


@dataclass(frozen=True)
class QM9Files:
    csv: Path  # column ``smiles``, GDB-9 order
    test_idx: Path  # JSON with ``test_idx``: 0-based rows of ``csv``


def locate_qm9(
    path: str | os.PathLike | None = None,
    download: bool = False,
    fetch: Callable[[str, Path], None] = fetch_url,
) -> QM9Files:
    """QM9 from ``path`` (a CSV, or a folder holding ``qm9.csv`` and ``qm9_test_idx.json``), else
    from ``$MOLGEN_QM9``, else from the download cache, else downloaded when ``download`` is set.
    """
    candidates = [Path(p) for p in (path, os.environ.get("MOLGEN_QM9")) if p]
    for candidate in candidates:
        folder = candidate if candidate.is_dir() else candidate.parent
        csv = candidate if candidate.is_file() else folder / "qm9.csv"
        test_idx = folder / "qm9_test_idx.json"
        if csv.is_file() and test_idx.is_file():
            return QM9Files(csv, test_idx)
        if path is not None:
            raise FileNotFoundError(f"expected qm9.csv and qm9_test_idx.json at {candidate}")
    cached = QM9Files(cache_dir() / "qm9" / "qm9.csv", cache_dir() / "qm9" / "qm9_test_idx.json")
    if cached.csv.is_file() and cached.test_idx.is_file():
        return cached
    if not download:
        raise FileNotFoundError(
            "QM9 not found: pass its path (a qm9.csv with qm9_test_idx.json beside it), set MOLGEN_QM9,"
            " or allow the download (--download)"
        )
    return download_qm9(cached.csv.parent, fetch)


def download_qm9(folder: Path, fetch: Callable[[str, Path], None] = fetch_url) -> QM9Files:
    """Download QM9 (DeepChem's CSV) and the published test split (MoFlow/GDSS ``valid_idx_qm9``),
    and convert them to molgen's layout: ``qm9.csv`` (column ``smiles``, GDB order) and
    ``qm9_test_idx.json`` (0-based ``test_idx``)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw_csv, raw_idx = folder / "raw_qm9.csv", folder / "raw_valid_idx_qm9.json"
    fetch(QM9_CSV_URL, raw_csv)
    fetch(QM9_TEST_IDX_URL, raw_idx)
    table = pd.read_csv(raw_csv)
    if "smiles" not in table.columns or "mol_id" not in table.columns:
        raise ValueError(f"downloaded QM9 table lacks smiles/mol_id columns: {list(table.columns)[:10]}")
    table["gdb"] = table["mol_id"].str.extract(r"(\d+)$", expand=False).astype(int)
    table = table.sort_values("gdb")
    if len(table) != QM9_ROWS:
        raise ValueError(f"downloaded QM9 has {len(table)} rows, expected {QM9_ROWS}")
    # The published file lists 1-based GDB ids as strings (MoFlow convention).
    test_idx = sorted(int(i) - 1 for i in json.loads(raw_idx.read_text())["valid_idxs"])
    files = QM9Files(folder / "qm9.csv", folder / "qm9_test_idx.json")
    atomic_write_bytes(files.csv, table[["smiles"]].to_csv(index=False).encode())
    index = {"test_idx": test_idx, "n_rows": QM9_ROWS, "index_base": 0}
    atomic_write_bytes(files.test_idx, json.dumps(index).encode())
    raw_csv.unlink()
    raw_idx.unlink()
    return files


def read_test_indices(path: str | os.PathLike, n_rows: int) -> np.ndarray:
    data = json.loads(Path(path).read_text())
    indices = np.array(data["test_idx"] if isinstance(data, dict) else data, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= n_rows):
        raise ValueError(f"test indices in {path} fall outside the {n_rows} rows of the source")
    return np.unique(indices)


def split_rows(n_rows: int, test_idx: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Split id per source row (0 train, 1 val, 2 test); val is a seeded carve-out of train."""
    split = np.zeros(n_rows, dtype=np.int8)
    split[test_idx] = 2
    train_rows = np.flatnonzero(split == 0)
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * len(train_rows)))
    split[rng.choice(train_rows, size=n_val, replace=False)] = 1
    return split


def _graphs_of(
    smiles: list[str | None], aromatic_bonds: bool = False
) -> list[tuple[MolecularGraph | None, str | None, str]]:
    """(graph, canonical SMILES) or (None, reason) per SMILES; runs in worker processes."""
    out: list[tuple[MolecularGraph | None, str | None, str]] = []
    for text in smiles:
        mol, reason = parse_smiles_with_reason(text)
        if mol is None:
            out.append((None, reason, "invalid_smiles"))
            continue
        try:
            out.append((molecular_graph(mol, aromatic_bonds), canonical_smiles(mol), "ok"))
        except OutOfDomain as error:
            out.append((None, str(error), "out_of_domain"))
    return out


@dataclass
class PreparedDataset:
    """Encoded molecules of one source: arrays over the rows whose status is ``ok``."""

    vocab: Vocabulary
    graphs: MoleculeGraphs  # the M molecules as torch-geometric graphs of atom- and bond-type ids
    smiles: np.ndarray  # (M,) canonical SMILES
    source_rows: np.ndarray  # (M,) row in the source file
    split: np.ndarray  # (M,) 0 train, 1 val, 2 test
    rejected: pd.DataFrame  # row, status, reason of every source row that is not ``ok``
    fingerprint: str
    source: str

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def sizes(self) -> np.ndarray:
        """(M,) heavy-atom counts."""
        return self.graphs.sizes

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def batch(self, indices: np.ndarray) -> GraphBatch:
        """The molecules at ``indices``, padded to the vocabulary's largest molecule."""
        return self.graphs.dense(indices, self.vocab.max_atoms)

    def size_distribution(self, split: str = "train") -> np.ndarray:
        """p(n) for n = 0..N over ``split``."""
        counts = np.bincount(self.sizes[self.indices(split)], minlength=self.vocab.max_atoms + 1)
        return counts / counts.sum()

    def status_counts(self) -> dict[str, int]:
        counts = {"ok": len(self)}
        counts.update(self.rejected["status"].value_counts().to_dict())
        return counts

    def split_sizes(self) -> dict[str, int]:
        return {name: int((self.split == i).sum()) for i, name in enumerate(SPLITS)}

    def save(self, path: Path) -> None:
        meta = {
            "vocab": self.vocab.to_dict(),
            "fingerprint": self.fingerprint,
            "source": self.source,
            "rejected": self.rejected.to_dict(orient="list"),
        }
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            np.savez(
                handle, **self.graphs.arrays(), smiles=self.smiles, source_rows=self.source_rows, split=self.split,
                meta=np.array(json.dumps(meta)),
            )
        os.replace(handle.name, path)

    @classmethod
    def load(cls, path: Path) -> "PreparedDataset":
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            return cls(
                vocab=Vocabulary.from_dict(meta["vocab"]),
                graphs=MoleculeGraphs(**{name: arrays[name] for name in ARRAYS}),
                smiles=arrays["smiles"], source_rows=arrays["source_rows"], split=arrays["split"],
                rejected=pd.DataFrame(meta["rejected"], columns=["row", "status", "reason"]),
                fingerprint=meta["fingerprint"], source=meta["source"],
            )


def fingerprint(paths: Iterable[Path], options: dict) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps({**options, "tokenizer_version": TOKENIZER_VERSION}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def prepare_dataset(
    source: str | os.PathLike,
    test_idx: str | os.PathLike | None = None,
    smiles_column: str | None = None,
    vocab: Vocabulary | None = None,
    max_atoms: int | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    workers: int = 1,
    use_cache: bool = True,
    aromatic_bonds: bool = False,
) -> tuple[PreparedDataset, bool]:
    """Encode ``source`` (any readable molecule file); returns the dataset and whether it came
    from the cache. Without ``test_idx`` the test split is empty. Bonds are kekulized unless
    ``aromatic_bonds`` (or ``vocab``) says otherwise."""
    source = Path(source)
    paths = [source] + ([Path(test_idx)] if test_idx else [])
    aromatic_bonds = vocab.aromatic_bonds if vocab else aromatic_bonds
    options = {
        "smiles_column": smiles_column, "vocab": vocab.to_dict() if vocab else None,
        "max_atoms": max_atoms, "val_fraction": val_fraction, "seed": seed,
    }
    if aromatic_bonds:  # only then, so that caches of Kekulé data keep their keys
        options["aromatic_bonds"] = True
    key = fingerprint(paths, options)
    # ".graphs": caches of the dense layout before it (same key, other arrays) are left alone.
    cached = cache_dir() / "prepared" / f"{source.stem}-{key}.graphs.npz"
    if use_cache and cached.is_file():
        return PreparedDataset.load(cached), True

    smiles: list[str | None] = []
    for chunk in read_molecules(source, smiles_column):
        smiles.extend(chunk.smiles)
    n_rows = len(smiles)
    test_rows = read_test_indices(test_idx, n_rows) if test_idx else np.array([], dtype=np.int64)
    row_split = split_rows(n_rows, test_rows, val_fraction, seed)

    parts = [smiles[i : i + 5_000] for i in range(0, n_rows, 5_000)]
    encode = partial(_graphs_of, aromatic_bonds=aromatic_bonds)
    if workers > 1 and len(parts) > 1:
        with process_pool(workers) as pool:
            results = [r for part in pool.map(encode, parts) for r in part]
    else:
        results = [r for part in parts for r in encode(part)]

    if vocab is None:
        train_graphs = [g for (g, _, _), s in zip(results, row_split) if g is not None and s == 0]
        if not train_graphs:
            first = next(((row, status, reason) for row, (g, reason, status) in enumerate(results) if g is None), None)
            detail = f"; row {first[0] + 1}: {first[1]}: {first[2]}" if first else ""
            raise InputError(f"{source}: no molecule to train on among its {n_rows:,} rows{detail}")
        vocab = Vocabulary.from_graphs(train_graphs, max_atoms, aromatic_bonds)
    dataset = _encode_results(results, row_split, vocab, source, key)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        dataset.save(cached)
    return dataset, False


def _encode_results(results, row_split, vocab: Vocabulary, source: Path, key: str) -> PreparedDataset:
    keep: list[int] = []
    rejected: list[tuple[int, str, str]] = []
    for row, (graph, text, status) in enumerate(results):
        if graph is None:
            rejected.append((row, status, text))
            continue
        problem = domain_problem(graph, vocab)
        if problem is not None:
            rejected.append((row, "out_of_domain", problem))
            continue
        keep.append(row)
    molecules, smiles = [], []
    for row in keep:
        graph, text, _ = results[row]
        molecules.append((np.array([vocab.index(a) for a in graph.atom_keys], dtype=np.int8), graph.bonds))
        smiles.append(text)
    return PreparedDataset(
        vocab=vocab, graphs=MoleculeGraphs.from_molecules(molecules), smiles=np.array(smiles, dtype=str),
        source_rows=np.array(keep, dtype=np.int64), split=row_split[keep],
        rejected=pd.DataFrame(rejected, columns=["row", "status", "reason"]),
        fingerprint=key, source=str(source),
    )

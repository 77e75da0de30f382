import json

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from molgen.data import (
    QM9_CSV_URL,
    QM9_ROWS,
    QM9_TEST_IDX_URL,
    PreparedDataset,
    cache_dir,
    locate_qm9,
    prepare_dataset,
    split_rows,
)

SMILES = ["C", "CO", "C#N", "C[N+](=O)[O-]", "not_smiles", "CCCl", "CCCCCCCCCCCC", "c1ccoc1", "CC.C", "OCC=O"]


def test_split_rows_is_seeded_and_disjoint():
    test = np.array([0, 5, 9])
    a, b = split_rows(100, test, 0.1, seed=1), split_rows(100, test, 0.1, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, split_rows(100, test, 0.1, seed=2))
    assert set(np.flatnonzero(a == 2)) == {0, 5, 9}
    assert (a == 1).sum() == round(0.1 * 97)


def test_prepare_statuses_splits_vocabulary_and_cache(tmp_path):
    source = tmp_path / "mols.csv"
    pd.DataFrame({"smiles": SMILES}).to_csv(source, index=False)
    test_idx = tmp_path / "test.json"
    test_idx.write_text(json.dumps({"test_idx": [1, 2]}))
    dataset, from_cache = prepare_dataset(source, test_idx, max_atoms=9, val_fraction=0.0)
    assert not from_cache
    assert dataset.status_counts() == {"ok": 6, "invalid_smiles": 1, "out_of_domain": 3}
    reasons = dict(zip(dataset.rejected["row"], dataset.rejected["reason"]))
    # The vocabulary comes from the training split: neutral N occurs only in a test molecule.
    assert reasons[2] == "atom type N (neutral) not in vocabulary"
    assert reasons[4].startswith("SMILES syntax error")
    assert reasons[6] == "12 heavy atoms > 9"
    assert reasons[8] == "2 disconnected fragments (salt or mixture)"
    assert dataset.split_sizes() == {"train": 5, "val": 0, "test": 1}
    assert set(dataset.vocab.labels) == {"C", "O", "N+", "O-", "Cl"}
    batch = dataset.batch(dataset.indices("train"))
    assert batch.atoms.shape == (5, 9) and batch.mask.sum().item() == sum(dataset.sizes[dataset.indices("train")])
    assert dataset.size_distribution().sum() == pytest.approx(1.0)

    again, from_cache = prepare_dataset(source, test_idx, max_atoms=9, val_fraction=0.0)
    assert from_cache
    assert all(np.array_equal(again.graphs.arrays()[name], array) for name, array in dataset.graphs.arrays().items())
    assert list(again.smiles) == list(dataset.smiles)
    assert again.vocab == dataset.vocab and again.fingerprint == dataset.fingerprint


def test_vocabulary_is_built_from_the_training_split_only(tmp_path):
    source = tmp_path / "mols.smi"
    source.write_text("C\nCO\n[O-]C=O\n")
    test_idx = tmp_path / "test.json"
    test_idx.write_text(json.dumps({"test_idx": [2]}))
    dataset, _ = prepare_dataset(source, test_idx, val_fraction=0.0, use_cache=False)
    assert dataset.rejected["reason"].tolist() == ["atom type O- (charge -1) not in vocabulary"]


def test_download_path_with_a_stand_in_server(tmp_path, monkeypatch):
    """The real download code runs; only the network is replaced by a function that writes the
    raw files in the published formats (DeepChem CSV, MoFlow/GDSS 1-based index JSON)."""
    monkeypatch.setattr("molgen.data.QM9_ROWS", 4)
    served = []

    def fake_fetch(url, destination):
        served.append(url)
        if url == QM9_CSV_URL:
            destination.write_text("mol_id,smiles,mu\ngdb_2,N,1\ngdb_1,C,0\ngdb_4,C#C,3\ngdb_3,O,2\n")
        else:
            destination.write_text(json.dumps({"valid_idxs": ["2", "4"]}))

    with pytest.raises(FileNotFoundError, match="allow the download"):
        locate_qm9()
    files = locate_qm9(download=True, fetch=fake_fetch)
    assert served == [QM9_CSV_URL, QM9_TEST_IDX_URL]
    assert pd.read_csv(files.csv)["smiles"].tolist() == ["C", "N", "O", "C#C"]  # GDB order
    assert json.loads(files.test_idx.read_text())["test_idx"] == [1, 3]  # 0-based
    assert locate_qm9() == files  # the second call finds the cache, no download
    assert sorted(p.name for p in files.csv.parent.iterdir()) == ["qm9.csv", "qm9_test_idx.json"]


@pytest.mark.slow
def test_full_qm9_prepares_with_the_published_split():
    csv = shared_file("qm9.csv")
    files = locate_qm9(csv)
    dataset, _ = prepare_dataset(files.csv, files.test_idx, workers=2)
    assert dataset.status_counts() == {"ok": QM9_ROWS}
    assert dataset.split_sizes()["test"] == 13_082
    assert dataset.split_sizes()["train"] + dataset.split_sizes()["val"] == QM9_ROWS - 13_082
    assert dataset.vocab.max_atoms == 9 and len(dataset.vocab.atom_types) == 8
    cached = next((cache_dir() / "prepared").glob("qm9-*.graphs.npz"))
    assert np.array_equal(PreparedDataset.load(cached).graphs.x, dataset.graphs.x)

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of the shared data folder; missing: skip locally, fail under CI (CI must see it)."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is required under CI but missing")
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own molgen cache so tests never see each other's prepared data."""
    monkeypatch.setenv("MOLGEN_CACHE", str(tmp_path / "molgen-cache"))
    monkeypatch.delenv("MOLGEN_QM9", raising=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny DiScoFormer trained for two epochs on 200 QM9 molecules: a real checkpoint, in seconds."""
    import pandas as pd

    from molgen.data import prepare_dataset
    from molgen.train import TrainConfig, Trainer, TrainingData

    folder = tmp_path_factory.mktemp("tiny")
    source = folder / "qm9_200.csv"
    qm9 = pd.read_csv(shared_file("qm9.csv"))
    charged = qm9[qm9["smiles"].str.contains(r"\+|-")].head(20)  # so the vocabulary has N+, O-, ...
    pd.concat([qm9.iloc[5000:5180], charged]).to_csv(source, index=False)
    dataset, _ = prepare_dataset(source, val_fraction=0.2, use_cache=False)
    config = TrainConfig(
        epochs=2, batch_size=32, warmup_steps=5, val_molecules=40, val_samples=2,
        model={"d_model": 32, "d_pair": 8, "n_layers": 2, "n_heads": 4, "d_ff": 64},
    )
    trainer = Trainer(config, TrainingData.combine([dataset], ["qm9"]), folder / "run")
    trainer.fit()
    return trainer.checkpoint_path

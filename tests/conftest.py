import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def example_molecules():
    """The bundled QM9-like molecules (data/examples/generated.csv): what tests that need many
    small molecules but not QM9 itself train and score on, so a fresh clone runs them."""
    import pandas as pd

    return pd.read_csv(EXAMPLES / "generated.csv")["smiles"]


def small_molecules(count: int = 150, max_atoms: int = 5):
    """``count`` distinct molecules of at most ``max_atoms`` heavy atoms, cut from the example
    molecules along bond paths: tiny molecules (like QM9's first rows) that the examples lack."""
    import pandas as pd
    from rdkit import Chem

    found: dict[str, None] = {}
    for text in example_molecules():
        mol = Chem.MolFromSmiles(text)
        for length in range(1, max_atoms):
            for path in Chem.FindAllPathsOfLengthN(mol, length, useBonds=True):
                atoms = {index for bond in path for index in (mol.GetBondWithIdx(bond).GetBeginAtomIdx(),
                                                             mol.GetBondWithIdx(bond).GetEndAtomIdx())}
                piece = Chem.MolFromSmiles(Chem.MolFragmentToSmiles(mol, sorted(atoms), bondsToUse=list(path),
                                                                    kekuleSmiles=True))
                if piece is not None:
                    found.setdefault(Chem.MolToSmiles(piece))
        if len(found) >= count:
            break
    return pd.Series(list(found)[:count], name="smiles")


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
    """A tiny DiScoFormer trained for two epochs on 200 QM9-like molecules: a real checkpoint, in seconds."""
    import pandas as pd

    from molgen.data import prepare_dataset
    from molgen.training.trainer import TrainConfig, Trainer, TrainingData

    folder = tmp_path_factory.mktemp("tiny")
    source = folder / "molecules_200.csv"
    smiles = example_molecules()
    charged = smiles[smiles.str.contains(r"\+|-")].head(20)  # so the vocabulary has N+, O-, ...
    pd.concat([smiles.iloc[:180], charged]).to_frame().to_csv(source, index=False)
    dataset, _ = prepare_dataset(source, val_fraction=0.2, use_cache=False)
    config = TrainConfig(
        epochs=2, batch_size=32, warmup_steps=5, val_molecules=40, val_samples=2,
        model={"d_model": 32, "d_pair": 8, "n_layers": 2, "n_heads": 4, "d_ff": 64},
    )
    trainer = Trainer(config, TrainingData.combine([dataset], ["qm9"]), folder / "run")
    trainer.fit()
    return trainer.checkpoint_path


@pytest.fixture(scope="module")
def tiny():
    """(vocabulary, batch, model): an untrained two-layer DiScoFormer on eight small molecules."""
    from tiny_model import tiny_model

    return tiny_model()

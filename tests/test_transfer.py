from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import example_molecules
from typer.testing import CliRunner

from molgen.checkpoint import read_checkpoint, save_checkpoint
from molgen.chemistry import parse_smiles
from molgen.cli import app
from molgen.data import prepare_dataset
from molgen.noise import NoiseProcess
from molgen.tokenizer import collate, encode
from molgen.training.trainer import TrainConfig, Trainer, TrainingData

TINY = {"d_model": 32, "d_pair": 8, "n_layers": 2, "n_heads": 4, "d_ff": 64}


def training_data(path, aromatic_bonds: bool) -> TrainingData:
    dataset, _ = prepare_dataset(path, val_fraction=0.1, use_cache=False, aromatic_bonds=aromatic_bonds)
    return TrainingData.combine([dataset], ["qm9"])


@pytest.fixture(scope="module")
def qm9_csv(tmp_path_factory):
    smiles = example_molecules()
    # enough rows for pyrrole-type [nH] and the charged types to appear in the aromatic vocabulary
    picked = pd.concat([smiles.iloc[:300], smiles[smiles.str.contains(r"\[nH\]")].iloc[:20]])
    path = tmp_path_factory.mktemp("molecules") / "molecules_small.csv"
    picked.to_frame().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def kekule_checkpoint(qm9_csv, tmp_path_factory):
    data = training_data(qm9_csv, aromatic_bonds=False)
    trainer = Trainer(TrainConfig(epochs=1, batch_size=16, model=TINY, val_molecules=8), data,
                      tmp_path_factory.mktemp("run"))
    order = trainer.epoch_order(0)
    for index in range(5):  # a few steps, so that no weight is still at its initial value
        trainer.train_step(order[index * 16 : (index + 1) * 16])
    trainer.ema.load_state_dict(trainer.model.state_dict())
    trainer.save()
    return trainer


def outputs_on_clean_molecule(model, vocab, smiles):
    batch = collate([encode(parse_smiles(smiles), vocab)], vocab.max_atoms)
    x_atoms, x_bonds = batch.one_hot(vocab.num_atom_types, vocab.num_bond_types)
    noise = NoiseProcess()
    t = torch.tensor([0.3])
    with torch.no_grad():
        return model.eval()(x_atoms, x_bonds, batch.mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t),
                            torch.zeros(1, dtype=torch.long))


def test_weights_carry_over_to_an_aromatic_vocabulary_by_type(qm9_csv, kekule_checkpoint, tmp_path):
    source_vocab = kekule_checkpoint.data.vocab
    data = training_data(qm9_csv, aromatic_bonds=True)
    assert ("N", 0, 1) in data.vocab.atom_types and data.vocab.atom_types != source_vocab.atom_types
    trainer = Trainer(TrainConfig(epochs=1, batch_size=16, model=TINY, val_molecules=8), data, tmp_path / "run")
    mapped = trainer.initialize_from(kekule_checkpoint.checkpoint_path)
    assert set(mapped) == {"atom_in.weight", "bond_in.weight", "atom_head.weight", "atom_head.bias",
                           "bond_head.3.weight", "bond_head.3.bias"}

    # On a molecule without aromatic rings (the same graph in both vocabularies) the two models agree:
    # the same logits per atom type and bond type, and the new aromatic bond logit is the mean of
    # the single and double ones.
    smiles = "CC(O)C#N"
    before = outputs_on_clean_molecule(kekule_checkpoint.ema, source_vocab, smiles)
    after = outputs_on_clean_molecule(trainer.ema, data.vocab, smiles)
    order = [data.vocab.index(key) for key in source_vocab.atom_types]
    torch.testing.assert_close(after.atom_logits[..., order], before.atom_logits)
    torch.testing.assert_close(after.bond_logits[..., :4], before.bond_logits)
    torch.testing.assert_close(after.bond_logits[..., 4], before.bond_logits[..., 1:3].mean(-1))
    torch.testing.assert_close(after.density, before.density)
    # [nH] starts as the plain nitrogen did
    nitrogen, pyrrole_nitrogen = data.vocab.index(("N", 0, 0)), data.vocab.index(("N", 0, 1))
    torch.testing.assert_close(trainer.model.atom_head.weight[pyrrole_nitrogen], trainer.model.atom_head.weight[nitrogen])


def with_training_seconds(checkpoint: Path, seconds: float, path: Path) -> Path:
    payload = read_checkpoint(checkpoint)
    payload["meta"]["training_seconds"] = seconds
    save_checkpoint(payload, path)
    return path


def test_a_chain_of_warm_starts_counts_all_earlier_training(qm9_csv, kekule_checkpoint, tmp_path):
    data = training_data(qm9_csv, aromatic_bonds=True)
    config = TrainConfig(epochs=1, batch_size=16, model=TINY, val_molecules=8)
    second = Trainer(config, data, tmp_path / "second")
    second.initialize_from(with_training_seconds(kekule_checkpoint.checkpoint_path, 600.0, tmp_path / "first.pt"))
    second.save()
    third = Trainer(config, data, tmp_path / "third")
    third.initialize_from(with_training_seconds(second.checkpoint_path, 300.0, tmp_path / "second.pt"))
    assert third.initialized_from["training_seconds"] == 300.0
    assert third.initialized_from["total_training_seconds"] == 900.0


def test_another_architecture_is_refused_with_the_reason(qm9_csv, kekule_checkpoint, tmp_path):
    data = training_data(qm9_csv, aromatic_bonds=True)
    wider = Trainer(TrainConfig(epochs=1, model={**TINY, "d_model": 64, "d_ff": 128}), data, tmp_path / "run")
    with pytest.raises(ValueError, match=r"is \(.*\) in the source and \(.*\) here"):
        wider.initialize_from(kekule_checkpoint.checkpoint_path)


def test_cli_init_from_and_resume_are_exclusive(kekule_checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["train", "qm9", "--init-from", str(kekule_checkpoint.checkpoint_path),
                                      "--resume", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--init-from starts a new run" in result.output


def test_kekule_features_added_on_a_warm_start_begin_at_zero(qm9_csv, tmp_path):
    data = training_data(qm9_csv, aromatic_bonds=True)
    source = Trainer(TrainConfig(epochs=1, batch_size=16, model=TINY, val_molecules=8), data, tmp_path / "source")
    order = source.epoch_order(0)
    for index in range(3):
        source.train_step(order[index * 16 : (index + 1) * 16])
    source.ema.load_state_dict(source.model.state_dict())
    source.save()
    config = TrainConfig(epochs=1, batch_size=16, model={**TINY, "kekule_features": True}, val_molecules=8)
    target = Trainer(config, data, tmp_path / "target")
    target.initialize_from(source.checkpoint_path)

    # Self-conditioned on pyrrole with its [nH] made an n (every Kekulé feature on), both models agree.
    batch = collate([encode(parse_smiles("c1cc[nH]c1"), data.vocab)], data.vocab.max_atoms)
    x_atoms, x_bonds = batch.one_hot(data.vocab.num_atom_types, data.vocab.num_bond_types)
    x_atoms = x_atoms * batch.mask[..., None]
    broken = x_atoms.clone()
    broken[..., data.vocab.index(("N", 0, 0))] += broken[..., data.vocab.index(("N", 0, 1))]
    broken[..., data.vocab.index(("N", 0, 1))] = 0.0
    noise, t = NoiseProcess(), torch.tensor([0.3])
    inputs = (x_atoms, x_bonds, batch.mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        before = source.ema.eval()(*inputs, self_cond=(broken, x_bonds))
        after = target.ema.eval()(*inputs, self_cond=(broken, x_bonds))
    torch.testing.assert_close(after.atom_logits, before.atom_logits)
    torch.testing.assert_close(after.density, before.density)

    # The other way round the features would be lost: refused.
    back = Trainer(TrainConfig(epochs=1, model=TINY), data, tmp_path / "back")
    target.save()
    with pytest.raises(ValueError, match="reads kekule features"):
        back.initialize_from(target.checkpoint_path)


def test_cli_kekule_features_need_aromatic_bonds(tmp_path):
    result = CliRunner().invoke(app, ["train", "qm9", "--kekule-features", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--kekule-features reads aromatic bonds: add --aromatic-bonds" in result.output


def test_a_new_distribution_and_room_for_larger_molecules_start_from_the_source(qm9_csv, kekule_checkpoint, tmp_path):
    dataset, _ = prepare_dataset(qm9_csv, val_fraction=0.1, use_cache=False)
    other = tmp_path / "other.csv"
    example_molecules().iloc[300:400].to_frame().to_csv(other, index=False)
    second, _ = prepare_dataset(other, val_fraction=0.1, use_cache=False)
    data = TrainingData.combine([second, dataset], ["other", "qm9"], max_atoms=12)
    assert data.vocab.max_atoms == 12
    trainer = Trainer(TrainConfig(epochs=1, batch_size=16, model=TINY, val_molecules=8), data, tmp_path / "run")
    fresh_positions = trainer.model.position.detach().clone()
    mapped = trainer.initialize_from(kekule_checkpoint.checkpoint_path)
    assert {"position", "dist.weight"} <= set(mapped)
    source = kekule_checkpoint.ema
    position = trainer.model.position.detach()
    torch.testing.assert_close(position[:9], source.position.detach())  # the source's 9 positions kept
    torch.testing.assert_close(position[9:], fresh_positions[9:])  # room for more starts fresh
    dist = trainer.model.dist.weight.detach()
    # Carried by name: "qm9" is the source's distribution 0; "other" starts from the source's null row.
    torch.testing.assert_close(dist[1], source.dist.weight[0].detach())
    torch.testing.assert_close(dist[0], source.dist.weight[1].detach())
    torch.testing.assert_close(dist[2], source.dist.weight[1].detach())

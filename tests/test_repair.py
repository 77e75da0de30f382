import pandas as pd
import pytest
import torch
from conftest import example_molecules, small_molecules
from test_features import MATCHING_WEIGHTS, aromatic_graphs
from typer.testing import CliRunner

from molgen.checkpoint import load_model, read_checkpoint
from molgen.chemistry import parse_smiles
from molgen.cli import app
from molgen.data import prepare_dataset
from molgen.model import DensityConfig, DiScoConfig, DiScoFormer
from molgen.model.features import kekule_features
from molgen.model.repair import repair_gate
from molgen.noise import NoiseProcess
from molgen.decode import decode_raw, nearest_molecule
from molgen.training.repair import RepairConfig, fit_on_chains, fit_repair_adapter, no_molecule, record_chains, with_repair_adapter
from molgen.training.trainer import TrainConfig, Trainer, TrainingData

TINY = {"d_model": 32, "d_pair": 8, "n_layers": 2, "n_heads": 4, "d_ff": 64}
SINGLE, TRIPLE = 1, 3


def set_bond(x_bonds, molecule, i, j, bond_type):
    x_bonds[molecule, i, j] = x_bonds[molecule, j, i] = torch.nn.functional.one_hot(
        torch.tensor(bond_type), x_bonds.shape[-1]).float()


def test_repair_gate_opens_exactly_on_graphs_that_are_no_molecule():
    vocab, x_atoms, x_bonds, (valences, orders) = aromatic_graphs(["c1cc[nH]c1", "CC(C)O", "CCO", "c1ccncc1"])

    def gate(atoms, bonds):
        return repair_gate(atoms, bonds, kekule_features(atoms, bonds, valences, orders, MATCHING_WEIGHTS),
                           valences, orders)

    assert gate(x_atoms, x_bonds).tolist() == [0, 0, 0, 0]  # real molecules
    atoms, bonds = x_atoms.clone(), x_bonds.clone()
    # Pyrrole with its [nH] made an n: five atoms need a double bond, no Kekulé structure.
    nitrogen = int((atoms[0].argmax(-1) == vocab.index(("N", 0, 1))).nonzero()[0])
    atoms[0, nitrogen] = torch.nn.functional.one_hot(torch.tensor(vocab.index(("N", 0, 0))), vocab.num_atom_types)
    # Isopropanol with a C#O: the oxygen and its carbon are over their valences.
    oxygen = int((atoms[1].argmax(-1) == vocab.index(("O", 0, 0))).nonzero()[0])
    carbon = int(bonds[1, oxygen, :, SINGLE].nonzero()[0])
    set_bond(bonds, 1, oxygen, carbon, TRIPLE)
    # Ethanol without its C-O bond: two fragments.
    oxygen = int((atoms[2].argmax(-1) == vocab.index(("O", 0, 0))).nonzero()[0])
    carbon = int(bonds[2, oxygen, :, SINGLE].nonzero()[0])
    set_bond(bonds, 2, oxygen, carbon, 0)
    assert gate(atoms, bonds).tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("pair_width", [0, 8])
def test_repair_adapter_acts_only_on_estimates_that_are_no_molecule_at_low_noise(pair_width):
    vocab, x_atoms, x_bonds, _ = aromatic_graphs(["c1cc[nH]c1", "c1ccncc1"])
    config = DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences), vocab.bond_orders,
                         kekule_features=True, **TINY)
    plain = DiScoFormer(config).eval()
    repaired = with_repair_adapter(plain, 16, min_logsnr=-1.5, pair_width=pair_width).eval()
    mask = x_atoms.sum(-1) > 0
    broken = x_atoms.clone()  # molecule 0's estimate: pyrrole with its [nH] made an n
    nitrogen = int((broken[0].argmax(-1) == vocab.index(("N", 0, 1))).nonzero()[0])
    broken[0, nitrogen] = torch.nn.functional.one_hot(torch.tensor(vocab.index(("N", 0, 0))), vocab.num_atom_types)
    dist = torch.zeros(2, dtype=torch.long)

    def outputs(model, logsnr, self_cond):
        logsnr = torch.full((2,), logsnr)
        with torch.no_grad():
            return model(x_atoms, x_bonds, mask, logsnr, logsnr, dist, self_cond)

    # Zero at first: the new model computes what the old one did, even on a broken estimate.
    torch.testing.assert_close(outputs(repaired, 2.0, (broken, x_bonds)).atom_logits,
                               outputs(plain, 2.0, (broken, x_bonds)).atom_logits)
    torch.testing.assert_close(outputs(repaired, 2.0, (broken, x_bonds)).bond_logits,
                               outputs(plain, 2.0, (broken, x_bonds)).bond_logits)
    fitted = [repaired.repair.atoms] + ([repaired.repair.pairs] if pair_width else [])
    for module in fitted:
        torch.nn.init.normal_(module[-1].weight)  # as if fitted
    new, old = outputs(repaired, 2.0, (broken, x_bonds)), outputs(plain, 2.0, (broken, x_bonds))
    assert not torch.allclose(new.atom_logits[0], old.atom_logits[0])  # the broken estimate opens the gate
    torch.testing.assert_close(new.atom_logits[1], old.atom_logits[1])  # pyridine's does not
    torch.testing.assert_close(new.bond_logits[1], old.bond_logits[1])
    if pair_width:  # the pair side alone moves the bonds of a broken estimate
        torch.nn.init.zeros_(repaired.repair.atoms[-1].weight)
        new = outputs(repaired, 2.0, (broken, x_bonds))
        torch.testing.assert_close(new.atom_logits[1], old.atom_logits[1])
        assert not torch.allclose(new.bond_logits[0], old.bond_logits[0])
        torch.testing.assert_close(new.bond_logits[0], new.bond_logits[0].transpose(0, 1))
        torch.nn.init.normal_(repaired.repair.atoms[-1].weight)
    # Shut at levels noisier than min_logsnr, without an estimate, and on real molecules at the clean
    # end, where the density head reads.
    for logsnr, self_cond in [(-3.0, (broken, x_bonds)), (2.0, None), (9.0, (x_atoms, x_bonds))]:
        new, old = outputs(repaired, logsnr, self_cond), outputs(plain, logsnr, self_cond)
        torch.testing.assert_close(new.atom_logits, old.atom_logits)
        torch.testing.assert_close(new.bond_logits, old.bond_logits)
        torch.testing.assert_close(new.density, old.density)


@pytest.fixture(scope="module")
def aromatic_run(tmp_path_factory):
    """A tiny aromatic-vocabulary model with Kekulé features after a few steps, and its data file."""
    smiles = example_molecules()
    aromatic = smiles[smiles.str.contains(r"c|n|o")]
    folder = tmp_path_factory.mktemp("aromatic")
    path = folder / "molecules_aromatic.csv"
    # Small molecules with the aromatic ones: the tiny model's chains then open the repair gate.
    pd.concat([small_molecules(150), aromatic.iloc[:150]]).to_frame().to_csv(path, index=False)
    dataset, _ = prepare_dataset(path, use_cache=False, aromatic_bonds=True)  # as `molgen repair --data` prepares it
    data = TrainingData.combine([dataset], [path.stem])
    trainer = Trainer(TrainConfig(epochs=1, batch_size=16, model={**TINY, "kekule_features": True}, val_molecules=8),
                      data, folder / "run")
    order = trainer.epoch_order(0)
    for index in range(5):
        trainer.train_step(order[index * 16 : (index + 1) * 16])
    trainer.ema.load_state_dict(trainer.model.state_dict())
    trainer.save()
    return trainer, path


def test_fitting_the_adapter_lowers_its_loss_and_changes_nothing_else(aromatic_run):
    trainer, _ = aromatic_run
    model = with_repair_adapter(trainer.ema, 16, min_logsnr=-1.5, pair_width=8)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    config = RepairConfig(width=16, pair_width=8, steps=60, batch_size=32, check_molecules=64)
    report = fit_repair_adapter(model, trainer.data, NoiseProcess(), config)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}
    assert {".".join(name.split(".")[:2]) for name in changed} == {"repair.atoms", "repair.pairs"}  # both sides, nothing else
    assert report["gated_per_batch"] > 0 and report["check_gated"] > 0
    assert 0.0 <= report["mended_before"] <= 1.0 and 0.0 <= report["mended_after"] <= 1.0
    assert report["loss_last_tenth"] < report["loss_first_tenth"]
    assert not any(parameter.requires_grad for parameter in model.parameters())


@pytest.mark.slow
def test_cli_repair_writes_a_model_with_the_adapter(aromatic_run, tmp_path, tiny_checkpoint):
    trainer, path = aromatic_run
    output = tmp_path / "repaired.pt"
    arguments = ["--steps", "20", "--batch-size", "16", "--width", "8", "--pair-width", "4", "--chains", "30",
                 "--chain-steps", "3", "--check-chains", "10"]
    result = CliRunner().invoke(app, ["repair", str(trainer.checkpoint_path), "--data", str(path), "-o", str(output),
                                      *arguments])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "held-out estimates that were no molecule, the next pass made" in printed
    assert "of 30 of its own chains: raw validity of 10 fresh chains" in printed
    repaired, source = load_model(output), read_checkpoint(trainer.checkpoint_path)["ema"]
    assert repaired.model.config.repair.width == 8 and repaired.model.config.repair.pair_width == 4
    assert repaired.meta["repair"]["config"]["steps"] == 20
    again = tmp_path / "again.pt"
    CliRunner().invoke(app, ["repair", str(trainer.checkpoint_path), "--data", str(path), "-o", str(again), *arguments])
    same = read_checkpoint(again)["ema"]
    assert all(torch.equal(value, same[name]) for name, value in read_checkpoint(output)["ema"].items())  # same seed
    card = CliRunner().invoke(app, ["info", "--checkpoint", str(output)])
    text = " ".join(token for token in card.output.split() if token != "│")  # the cell as one line
    assert "width 8 (pair side 4), acts at log-SNR >= -1.5 while the estimate is no molecule; 20 steps; mends" in text
    assert "repair adapter: own chains" in text and "chains, 3 steps; raw validity" in text
    weights = repaired.model.state_dict()
    assert all(torch.equal(weights[name], value) for name, value in source.items())
    # A model without Kekulé features cannot have one: one line, no traceback.
    tiny_source = tiny_checkpoint.parent.parent / "molecules_200.csv"
    bad = CliRunner().invoke(app, ["repair", str(tiny_checkpoint), "--data", str(tiny_source), "--steps", "2"])
    assert bad.exit_code == 2 and "--kekule-features" in bad.output
    missing = CliRunner().invoke(app, ["repair", str(tmp_path / "none.pt"), "--data", str(path)])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_the_density_head_never_sees_the_adapter():
    """RDKit accepts an aromatic ring with a triple bond in it, which the gate counts as over a valence:
    its clean-end forward pass opens the gate, yet its log_density is the model's without the adapter."""
    from molgen.likelihood import log_density
    from molgen.tokenizer import collate, encode

    smiles = ["Cn1c#cc(=O)nc1N", "c1ccncc1"]
    vocab, x_atoms, x_bonds, _ = aromatic_graphs(smiles)
    config = DiScoConfig(vocab.num_atom_types, 9, tuple(int(v) for v in vocab.max_valences), vocab.bond_orders,
                         kekule_features=True, density=DensityConfig(atom_terms=True), **TINY)
    plain = DiScoFormer(config).eval()
    repaired = with_repair_adapter(plain, 16, min_logsnr=-1.5).eval()
    torch.nn.init.normal_(repaired.repair.atoms[-1].weight)
    batch = collate([encode(parse_smiles(s), vocab) for s in smiles], 9)
    noise, dist = NoiseProcess(), torch.zeros(2, dtype=torch.long)
    clean = torch.full((2,), noise.atoms.logsnr_max)
    with torch.no_grad():
        opened = repaired(x_atoms, x_bonds, batch.mask, clean, clean, dist, (x_atoms, x_bonds)).density
        shut = plain(x_atoms, x_bonds, batch.mask, clean, clean, dist, (x_atoms, x_bonds)).density
    assert opened[0] != shut[0] and opened[1] == shut[1]  # the odd ring opens the gate in a forward pass
    torch.testing.assert_close(log_density(repaired, batch, dist, noise), log_density(plain, batch, dist, noise))


def one_hot_graph(types, bonds, vocab):
    return torch.nn.functional.one_hot(types, vocab.num_atom_types).double().numpy(), \
        torch.nn.functional.one_hot(bonds, vocab.num_bond_types).double().numpy()


def test_nearest_molecule_keeps_a_molecule_and_mends_a_ring_by_its_likeliest_change():
    vocab, x_atoms, x_bonds, _ = aromatic_graphs(["Cc1ccc[nH]1"])
    atoms, bonds = x_atoms[0].argmax(-1), x_bonds[0].argmax(-1)
    k = int((x_atoms[0].sum(-1) > 0).sum())
    atoms, bonds = atoms[:k], bonds[:k, :k]
    atom_probs, bond_probs = one_hot_graph(atoms, bonds, vocab)
    found = nearest_molecule(0.9 * atom_probs + 0.01, 0.9 * bond_probs + 0.01, vocab)
    assert (found[0] == atoms.numpy()).all() and (found[1] == bonds.numpy()).all()  # already a molecule
    # The [nH] made an n (no Kekulé structure), with [nH] its second choice: the ring is mended by that
    # one change and stays aromatic, where decode_constrained would make it a Kekulé ring.
    nitrogen = int((atoms == vocab.index(("N", 0, 1))).nonzero()[0])
    atom_probs = 0.9 * atom_probs + 0.01
    atom_probs[nitrogen, vocab.index(("N", 0, 0))] = 0.95
    assert not decode_raw(atom_probs, 0.9 * bond_probs + 0.01, vocab).valid
    types, bond_ids = nearest_molecule(atom_probs, 0.9 * bond_probs + 0.01, vocab)
    assert (types == atoms.numpy()).all() and (bond_ids == bonds.numpy()).all()
    # Nine carbons all triple-bonded to each other are not two changes from a molecule.
    carbon = vocab.index(("C", 0, 0))
    nonsense = one_hot_graph(torch.full((9,), carbon), torch.full((9, 9), TRIPLE).fill_diagonal_(0), vocab)
    assert nearest_molecule(*nonsense, vocab) is None


@pytest.mark.slow
def test_the_adapter_is_fine_tuned_on_the_gated_states_of_its_own_chains(aromatic_run):
    trainer, _ = aromatic_run
    model = with_repair_adapter(trainer.ema, 16, min_logsnr=-1.5).eval()
    noise, vocab = NoiseProcess(), trainer.data.vocab
    sizes = trainer.data.size_distributions()
    config = RepairConfig(width=16, chains=40, chain_steps=5, chain_batch_size=8, check_chains=20)
    states, report = record_chains(model, noise, vocab, sizes, config, seed=2)
    assert report["chains"] == 40 and report["gated_states"] == len(states.chain) > 0
    # Every state kept had the gate open: an estimate that is no molecule, at low enough noise.
    assert no_molecule(model, states.prev_atoms, states.prev_bonds).all()
    assert (noise.atoms.logsnr(states.t) >= -1.5).all()
    assert (states.weights > 0).all() and states.chain.max() < 40
    for chain in states.chain.unique().tolist():  # each chain's target is a molecule
        k = int(states.mask[chain].sum())
        assert decode_raw(*one_hot_graph(states.target_atoms[chain, :k], states.target_bonds[chain, :k, :k], vocab),
                          vocab).valid
    before = {name: value.clone() for name, value in model.state_dict().items()}
    fitted = fit_on_chains(model, noise, vocab, sizes, config)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}
    assert changed and all(name.startswith("repair.") for name in changed)
    assert fitted["gated_states"] > 0 and 0.0 <= fitted["raw_validity_after"] <= 1.0
    assert not any(parameter.requires_grad for parameter in model.parameters())

import numpy as np
import torch
from test_train import TINY, qm9_subset

from molgen.training.distill import DistillConfig, distill_density_head, distillation_targets, with_atom_terms
from molgen.stats import spearman
from molgen.likelihood import clean_states
from molgen.training.trainer import TrainConfig, Trainer


def trained(tmp_path):
    """A tiny model trained for one epoch on 120 QM9 molecules, and its data."""
    data = qm9_subset(tmp_path, 120, val_fraction=0.25)
    trainer = Trainer(TrainConfig(epochs=1, batch_size=32, warmup_steps=2, model=TINY, val_molecules=10),
                      data, tmp_path / "run")
    trainer.fit()
    return data, trainer


def test_distillation_refits_only_the_density_head_and_reports_its_fit(tmp_path):
    data, trainer = trained(tmp_path)
    model = with_atom_terms(trainer.ema)
    model.density.members[0].cls.requires_grad_(False)  # as in an EMA copy
    flags = [parameter.requires_grad for parameter in model.parameters()]
    before = {name: value.clone() for name, value in model.state_dict().items()}
    config = DistillConfig(molecules=80, elbo_samples=4, check_molecules=20, check_samples=4, pilot_molecules=32,
                           epochs=20)
    report = distill_density_head(model, trainer.noise, data.batch, data.indices("train")[:80],
                                  data.indices("val")[:20], trainer.size_log_probs, config)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert all(name.startswith("density.") for name in changed)
    assert any(name.startswith("density.members.0.cls.") for name in changed)
    assert any(name.startswith("density.members.0.atoms.") for name in changed)
    assert [parameter.requires_grad for parameter in model.parameters()] == flags  # left as they were
    assert len(report["proposal"]) == 32 and np.isclose(sum(report["proposal"]), 1.0, atol=1e-5)
    for key in ("spearman_density_elbo_before", "spearman_density_elbo_after", "check_rmse_nats"):
        assert np.isfinite(report[key]), key
    # The refit head predicts the ELBO's scale: its mean sits on the targets' mean.
    assert abs(float(model.density.offset) + report["train_target_mean_nats"]) < 1e-4


def test_added_members_are_fit_each_on_its_own_under_the_given_proposal(tmp_path):
    data, trainer = trained(tmp_path)
    base = with_atom_terms(trainer.ema)
    model = base.with_density_members(2)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    proposal = torch.softmax(torch.randn(32, generator=torch.Generator().manual_seed(0)), 0)
    config = DistillConfig(molecules=80, elbo_samples=4, check_molecules=20, check_samples=4, epochs=20, add_members=2)
    report = distill_density_head(model, trainer.noise, data.batch, data.indices("train")[:80],
                                  data.indices("val")[:20], trainer.size_log_probs, config, proposal=proposal)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("density.members.1.", "density.members.2.")) for name in changed), changed
    assert {name.split(".")[2] for name in changed} == {"1", "2"}  # both new members were fit
    assert np.allclose(report["proposal"], proposal.numpy())  # the stored proposal, not a new pilot's
    assert report["members"] == [1, 2] and len(report["spearman_each_new_member"]) == 2
    assert np.isfinite(report["spearman_new_members"]) and np.isfinite(report["spearman_density_elbo_after"])
    # Two fits of the same targets from their own starts and batch orders end apart.
    batch, dist = data.batch(data.indices("val")[:20])
    with torch.no_grad():
        states = clean_states(model, batch, dist, trainer.noise)
        first, second = (model.density(states, batch.mask, [member]) for member in (1, 2))
    assert not torch.allclose(first, second)


def test_before_figure_of_added_members_is_the_head_without_them(tmp_path):
    data, trainer = trained(tmp_path)
    base = with_atom_terms(trainer.ema)
    proposal = torch.softmax(torch.randn(32, generator=torch.Generator().manual_seed(0)), 0)
    config = DistillConfig(molecules=40, elbo_samples=4, check_molecules=20, check_samples=4, epochs=1, add_members=1)
    rows, check = data.indices("train")[:40], data.indices("val")[:20]
    # The same config draws the same ELBOs, and the ELBO does not read the density head.
    targets = distillation_targets(base, trainer.noise, data.batch, rows, check, trainer.size_log_probs, config,
                                   proposal=proposal)
    with torch.no_grad():
        old_head = base.density(targets.check_states, targets.check_masks).numpy()
    report = distill_density_head(base.with_density_members(1), trainer.noise, data.batch, rows, check,
                                  trainer.size_log_probs, config, proposal=proposal)
    assert np.isclose(report["spearman_density_elbo_before"], spearman(old_head, -targets.check_elbos.numpy()))


def test_mutant_targets_are_new_encodable_molecules_with_their_parents_distribution(tmp_path):
    from molgen.training.distill import with_mutants

    data = qm9_subset(tmp_path, 120, val_fraction=0.25)
    batch_of, rows = with_mutants(data, 30, seed=0)
    count = len(rows)
    assert 20 <= count <= 30 and rows.min() == len(data.sizes)
    train = data.indices("train")
    batch, dist = batch_of(rows)
    assert batch.mask.shape[0] == count and batch.mask.shape[1] <= data.vocab.max_atoms and (dist == 0).all()
    assert (batch.mask.sum(1) >= 1).all()
    known = {tuple(data.graphs[int(row)].x.tolist()) for row in train}
    mutants = [tuple(atoms[mask].tolist()) for atoms, mask in zip(batch.atoms, batch.mask)]
    assert any(atoms not in known for atoms in mutants)  # not copies of training molecules


def test_huber_fit_ranks_the_bulk_despite_a_tail_of_huge_targets():
    """A few targets hundreds of nats off (as some mutants' ELBOs are) drag a least-squares head away
    from the bulk; the default Huber loss keeps ranking the bulk."""
    from molgen.training.distill import DistillationTargets, fit_density_head
    from molgen.model import DiScoConfig, DiScoFormer

    generator = torch.Generator().manual_seed(0)
    count, atoms = 3000, 5
    states = torch.randn(count, 2 + atoms, TINY["d_model"], generator=generator)
    masks = torch.ones(count, atoms)
    weights = torch.randn(TINY["d_model"], generator=generator)
    elbos = 15 + states[:, 1] @ weights / 4  # a linear function of the [CLS] state: fittable exactly
    check = torch.arange(count) >= 2400
    corrupted = elbos.clone()
    tail = torch.randperm(2400, generator=generator)[:120]  # 5% of the targets
    corrupted[tail] += 300 + 200 * torch.rand(120, generator=generator)
    targets = DistillationTargets(
        torch.full((32,), 1 / 32), states[~check], masks[~check], corrupted[~check], states[check], masks[check],
        elbos[check], elbos[check])

    def fitted_spearman(huber_nats: float) -> float:
        torch.manual_seed(0)
        model = DiScoFormer(DiScoConfig(num_atom_types=5, max_atoms=atoms, atom_valences=(4, 3, 2, 1, 4), **TINY))
        config = DistillConfig(epochs=20, batch_size=100, lr=3e-3, huber_nats=huber_nats)
        return fit_density_head(model, targets, config)["spearman_density_elbo_after"]

    huber, squares = fitted_spearman(2.0), fitted_spearman(0.0)
    assert huber > 0.9, huber  # about 0.97
    assert squares < 0.5, squares  # about 0.06


def test_a_fresh_head_recovers_a_head_stuck_above_its_bound(tmp_path):
    from molgen.checkpoint import load_model, read_checkpoint, save_checkpoint
    from molgen.likelihood import log_density
    from molgen.training.distill import distill_checkpoint

    data, trainer = trained(tmp_path)
    payload = read_checkpoint(trainer.checkpoint_path)
    for key in [k for k in payload["ema"] if k.startswith("density.members.0.cls.4.")]:
        payload["ema"][key] = payload["ema"][key] + 200.0  # every molecule far above 0 nats: the bound is flat
    stuck = tmp_path / "stuck.pt"
    save_checkpoint(payload, stuck)
    held_out = data.indices("val")[:20]

    def densities(path):
        loaded = load_model(path)
        batch, dist = data.batch(held_out)
        with torch.no_grad():
            return log_density(loaded.model, batch, dist, loaded.noise).numpy()

    assert np.all(densities(stuck) > -1e-6)
    config = DistillConfig(molecules=60, elbo_samples=4, check_molecules=10, check_samples=4, pilot_molecules=16,
                           epochs=30, fresh_head=True)
    report = distill_checkpoint(stuck, data, config, tmp_path / "fresh.pt")
    recovered = densities(tmp_path / "fresh.pt")
    assert np.all(recovered < -1.0) and recovered.std() > 0.1  # log-probabilities again, and they differ
    assert abs(np.mean(recovered) + report["train_target_mean_nats"]) < 0.5 * report["train_target_mean_nats"]


def test_targets_of_chunks_padded_to_different_sizes_line_up(tmp_path):
    """Each chunk of the ELBO targets is padded to its own largest molecule (drug-like sets span 9 to
    27 atoms): the states and masks of all chunks come back padded to the largest, each molecule's
    own states unchanged."""
    from molgen.training.distill import clean_states_and_elbo

    data = qm9_subset(tmp_path, 700)
    trainer = Trainer(TrainConfig(epochs=1, batch_size=32, model=TINY), data, tmp_path / "run")
    train = data.indices("train")
    small = np.resize(train[data.sizes[train] <= 7], 500)  # a first chunk of 500 padded to 7 atoms
    large = train[data.sizes[train] == 9][:500]  # the second to 9
    rows = np.concatenate([small, large])
    states, masks, elbos = clean_states_and_elbo(trainer.ema, trainer.noise, data.batch, rows, trainer.size_log_probs,
                                                 2, None, torch.Generator().manual_seed(0), max_rows=1000)
    n = int(data.sizes[rows].max())
    assert states.shape[:2] == (1000, n + 2) and masks.shape == (1000, n) and elbos.shape == (1000,)
    assert torch.equal(masks.sum(1), torch.from_numpy(data.sizes[rows]).to(masks.sum(1).dtype))
    batch, dist = data.batch(small)
    own = clean_states(trainer.ema, batch, dist, trainer.noise)
    assert torch.allclose(states[:500, : own.shape[1]], own, atol=1e-5)


def test_more_mutants_than_parents_come_from_second_edits_of_the_same_parents(tmp_path):
    from molgen.training.distill import with_mutants

    data = qm9_subset(tmp_path, 120, val_fraction=0.25)
    train = len(data.indices("train"))
    batch_of, rows = with_mutants(data, 2 * train, seed=0)
    assert len(rows) > train  # a pool of `train` parents gave more than one mutant each
    batch, _ = batch_of(rows)
    encoded = {(tuple(atoms[mask].tolist()), tuple(bonds[mask][:, mask].flatten().tolist()))
               for atoms, bonds, mask in zip(batch.atoms, batch.bonds, batch.mask)}
    assert len(encoded) == len(rows)  # every mutant a different molecule

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import example_molecules
from typer.testing import CliRunner

from molgen.checkpoint import load_model, read_checkpoint, save_checkpoint
from molgen.cli import app
from molgen.data import prepare_dataset
from molgen.likelihood import elbo
from molgen.training.losses import LossWeights, consistency_loss, training_losses
from molgen.model import posterior_probs
from molgen.noise import q_sample, symmetric_noise
from molgen.training.trainer import TrainConfig, Trainer, TrainingData, learning_rate

TINY = {"d_model": 32, "d_pair": 8, "n_layers": 2, "n_heads": 4, "d_ff": 64}


def qm9_subset(tmp_path, rows: int, val_fraction: float = 0.0):
    smiles = example_molecules().iloc[:rows]
    path = tmp_path / f"molecules_{rows}.csv"
    smiles.to_frame().to_csv(path, index=False)
    dataset, _ = prepare_dataset(path, val_fraction=val_fraction, use_cache=False)
    return TrainingData.combine([dataset], ["qm9"])


def fixed_elbo(trainer, data):
    rows = data.indices("train")
    batch, dist = data.batch(rows)
    estimate, _ = elbo(trainer.ema, batch, dist, trainer.noise, trainer.size_log_probs[dist], 16,
                       torch.Generator().manual_seed(0))
    return estimate.mean().item()


@pytest.mark.slow
def test_tiny_model_overfits_64_qm9_molecules(tmp_path):
    data = qm9_subset(tmp_path, 64)
    config = TrainConfig(epochs=150, batch_size=32, lr=3e-3, warmup_steps=20, ema_decay=0.9, model=TINY,
                         val_molecules=8, null_distribution_rate=0.0)
    trainer = Trainer(config, data, tmp_path / "run")
    before = fixed_elbo(trainer, data)
    scores = []
    for epoch in range(config.epochs):
        order = trainer.epoch_order(epoch)
        for index in range(trainer.steps_per_epoch):
            scores.append(trainer.train_step(order[index * 32 : (index + 1) * 32])["score"])
    after = fixed_elbo(trainer, data)
    first, last = sum(scores[:10]) / 10, sum(scores[-10:]) / 10
    assert last < 0.35 * first, (first, last)
    assert after < before - 100, (before, after)  # nats per molecule


@pytest.mark.slow
def test_consistency_loss_falls_when_trained(tmp_path):
    data = qm9_subset(tmp_path, 64)
    config = TrainConfig(epochs=60, batch_size=32, lr=3e-3, warmup_steps=10, model=TINY,
                         loss={**LossWeights().to_dict(), "nll": 0.0, "consistency": 1.0, "consistency_fraction": 1.0})
    trainer = Trainer(config, data, tmp_path / "run")
    batch, dist = data.batch(data.indices("train"))
    generator = torch.Generator().manual_seed(3)
    t = torch.rand(len(dist), generator=generator) * 0.8 + 0.1
    x_atoms, x_bonds = batch.one_hot(data.vocab.num_atom_types, data.vocab.num_bond_types)
    z_atoms = q_sample(x_atoms, t, trainer.noise.atoms, torch.randn(x_atoms.shape, generator=generator))
    z_bonds = q_sample(x_bonds, t, trainer.noise.bonds, symmetric_noise(x_bonds.shape, generator, "cpu", torch.float32))

    def measure():
        model = trainer.model.eval()
        with torch.no_grad():
            output = model(z_atoms, z_bonds, batch.mask, trainer.noise.atoms.logsnr(t), trainer.noise.bonds.logsnr(t), dist)
        x0_hat = posterior_probs(output, batch.mask)
        zeros = (torch.zeros_like(x_atoms), torch.zeros_like(x_bonds))
        return consistency_loss(model, z_atoms, z_bonds, batch.mask, t, dist, trainer.noise, zeros, x0_hat).item()

    before = measure()
    for epoch in range(config.epochs):
        order = trainer.epoch_order(epoch)
        for index in range(trainer.steps_per_epoch):
            trainer.train_step(order[index * 32 : (index + 1) * 32])
    assert measure() < 0.6 * before


def test_resume_after_interruption_gives_the_same_parameters(tmp_path):
    data = qm9_subset(tmp_path, 96, val_fraction=0.2)
    config = TrainConfig(epochs=3, batch_size=16, warmup_steps=5, model=TINY, val_molecules=8, val_samples=2)

    straight = Trainer(config, data, tmp_path / "straight")
    straight.fit()

    interrupted = Trainer(config, data, tmp_path / "interrupted")
    interrupted.fit(on_step=lambda values: interrupted.request_stop() if values["step"] == 7 else None)
    assert interrupted.step == 7  # stopped mid-epoch (4 steps per epoch), checkpoint written
    resumed = Trainer(config, data, tmp_path / "interrupted")
    resumed.resume()
    assert resumed.step == 7
    resumed.fit()
    assert resumed.step == straight.step
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    # The curve of the interrupted run: epoch 1, the 3 steps of epoch 2 before the stop, then epochs 2 and 3.
    records = [json.loads(line) for line in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("epoch", 4), ("progress", 7), ("epoch", 8), ("epoch", 12)]
    assert records[1]["epoch"] == 7 / 4 and np.isfinite(records[1]["train_total"])


def test_schedule_minutes_sets_the_epochs_from_the_measured_pace(tmp_path):
    data = qm9_subset(tmp_path, 80, val_fraction=0.2)
    config = TrainConfig(epochs=1000, batch_size=16, warmup_steps=4, model=TINY, val_molecules=8, val_samples=2,
                         schedule_minutes=1.0)
    trainer = Trainer(config, data, tmp_path / "run")
    trainer.step = 2 * trainer.steps_per_epoch
    trainer.fit_schedule(epoch_seconds=5.0, session_seconds=12.0)  # 48 s left: 9 more epochs of 5 s
    assert config.epochs == 11 and trainer.total_steps == 11 * trainer.steps_per_epoch

    # A budget already spent by epoch 2 ends the run there.
    config = TrainConfig(epochs=1000, batch_size=16, warmup_steps=4, model=TINY, val_molecules=8, val_samples=2,
                         schedule_minutes=1e-4)
    trainer = Trainer(config, data, tmp_path / "short")
    trainer.fit()
    assert trainer.step == 2 * trainer.steps_per_epoch and config.epochs == 2
    assert read_checkpoint(tmp_path / "short" / "checkpoint.pt")["meta"]["train_config"]["epochs"] == 2
    records = [json.loads(line) for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["epochs"] == 2


def test_a_refitted_schedule_keeps_its_rate_and_goes_on_falling(tmp_path):
    data = qm9_subset(tmp_path, 80, val_fraction=0.2)
    config = TrainConfig(epochs=9, batch_size=16, warmup_steps=4, model=TINY, val_molecules=8, val_samples=2,
                         schedule_minutes=1.0)
    trainer = Trainer(config, data, tmp_path / "run")
    per_epoch = trainer.steps_per_epoch
    trainer.step = 3 * per_epoch

    def rate(step):
        return learning_rate(step, config, trainer.total_steps, trainer.schedule_anchor)

    before = rate(trainer.step)
    trainer.fit_schedule(epoch_seconds=2.0, session_seconds=30.0)  # 30 s left: 15 more epochs, not 6
    assert config.epochs == 18 and abs(rate(trainer.step) - before) < 1e-12
    longer = [rate(step) for step in range(trainer.step, trainer.total_steps + 1)]
    assert all(b < a for a, b in zip(longer, longer[1:])) and abs(longer[-1] - 0.01 * config.lr) < 1e-12

    trainer.step = 6 * per_epoch  # then the machine got busy: 10 s left at 5 s an epoch
    before = rate(trainer.step)
    trainer.fit_schedule(epoch_seconds=5.0, session_seconds=50.0)
    assert config.epochs == 8 and abs(rate(trainer.step) - before) < 1e-12
    shorter = [rate(step) for step in range(trainer.step, trainer.total_steps + 1)]
    assert all(b < a for a, b in zip(shorter, shorter[1:])) and abs(shorter[-1] - 0.01 * config.lr) < 1e-12

    # The re-fitted schedule survives a resume: the same rate at the same step.
    trainer.save()
    resumed = Trainer(TrainConfig(**config.to_dict()), data, tmp_path / "run")
    resumed.resume()
    assert resumed.schedule_anchor == trainer.schedule_anchor
    assert learning_rate(resumed.step, resumed.config, resumed.total_steps, resumed.schedule_anchor) == before


def test_schedule_minutes_refits_at_every_epoch_from_the_second(tmp_path, monkeypatch):
    data = qm9_subset(tmp_path, 80, val_fraction=0.2)
    config = TrainConfig(epochs=4, batch_size=16, warmup_steps=4, model=TINY, val_molecules=8, val_samples=2,
                         schedule_minutes=60.0)
    trainer = Trainer(config, data, tmp_path / "run")
    refits = []
    monkeypatch.setattr(trainer, "fit_schedule", lambda epoch_seconds, session_seconds: refits.append(trainer.step))
    trainer.fit()
    assert refits == [epoch * trainer.steps_per_epoch for epoch in (2, 3, 4)]


def test_resume_from_a_checkpoint_whose_rng_came_from_another_device(tmp_path):
    data = qm9_subset(tmp_path, 80, val_fraction=0.2)
    config = TrainConfig(epochs=2, batch_size=16, warmup_steps=4, model=TINY, val_molecules=8, val_samples=2)
    trainer = Trainer(config, data, tmp_path / "run")
    trainer.fit(on_step=lambda values: trainer.request_stop() if values["step"] == 5 else None)
    payload = read_checkpoint(trainer.checkpoint_path)
    payload["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state is this size
    save_checkpoint(payload, trainer.checkpoint_path)
    resumed = Trainer(config, data, tmp_path / "run")
    resumed.resume()
    assert resumed.step == 5
    resumed.fit()
    assert resumed.step == 2 * resumed.steps_per_epoch
    assert all(torch.isfinite(p).all() for p in resumed.ema.parameters())


def test_training_losses_report_every_term(tmp_path):
    data = qm9_subset(tmp_path, 16)
    trainer = Trainer(TrainConfig(model=TINY), data, tmp_path / "run")
    batch, dist = data.batch(data.indices("train"))
    losses = training_losses(trainer.model, batch, dist, trainer.noise, trainer.size_log_probs[dist],
                             trainer.weights, torch.Generator().manual_seed(0))
    assert set(losses) == {"score", "nll", "dsm", "elbo", "consistency", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is not None for p in trainer.model.density.parameters())


@pytest.mark.slow
def test_train_cli_end_to_end(tmp_path):
    source = tmp_path / "mols.csv"
    example_molecules().iloc[:300].to_frame().to_csv(source, index=False)
    out = tmp_path / "run"
    args = ["train", str(source), "-o", str(out), "--epochs", "2", "--batch-size", "64", "--d-model", "16",
            "--n-layers", "1", "--n-heads", "2", "--d-pair", "4", "--val-molecules", "10"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "epoch 2/2:" in result.output and "finished at step" in result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_score", "train_nll", "train_consistency", "train_dsm", "val_elbo_nats", "spearman_density_elbo"):
        assert key in records[-1]
    loaded = load_model(out / "checkpoint.pt")
    assert loaded.distributions == ["mols"] and len(loaded.calibration["mols"]) == 101
    assert loaded.elbo_proposal is None
    assert (loaded.noise.atoms.logsnr_max, loaded.noise.atoms.logsnr_min) == (9.0, -9.0)
    assert loaded.noise.bonds == loaded.noise.atoms
    bad = CliRunner().invoke(app, ["train", str(source), "-o", str(out), "--device", "cuda:7"])
    assert bad.exit_code == 2 and "CUDA is not available" in bad.output
    bad = CliRunner().invoke(app, ["train", str(source), "-o", str(out), "--kekule-features", "--no-self-conditioning"])
    assert bad.exit_code == 2 and "--kekule-features reads the self-conditioning estimate" in bad.output
    for retired in ("--ring-features", "--bond-logsnr-shift", "--repair-share", "--repair-atoms"):
        bad = CliRunner().invoke(app, ["train", str(source), "-o", str(out), retired, "1"])
        assert bad.exit_code == 2 and "No such option" in bad.output
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("smiles\nxx\nC1CC\n")
    bad = CliRunner().invoke(app, ["train", str(nothing), "-o", str(out)])
    assert bad.exit_code == 2 and "no molecule to train on among its 2 rows; row 1: invalid_smiles" in bad.output
    few = tmp_path / "few.csv"
    few.write_text("smiles\nCCO\nCCN\nc1ccccc1\n")
    bad = CliRunner().invoke(app, ["train", str(few), "-o", str(out)])
    assert bad.exit_code == 2 and "few: 3 training and 0 held-out molecules; training needs both" in bad.output

    # --resume takes the options the run was trained with unless they are given again.
    result = CliRunner().invoke(app, ["train", str(source), "-o", str(out), "--resume", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert ("resuming with the checkpoint's --batch-size 64, --val-molecules 10, --d-model 16, --n-layers 1, "
            "--n-heads 2, --d-pair 4") in " ".join(result.output.split())
    assert "epoch 3/3:" in result.output and "epoch 2/" not in result.output
    resumed = load_model(out / "checkpoint.pt")
    assert resumed.meta["step"] == loaded.meta["step"] * 3 // 2 and resumed.noise == loaded.noise
    bad = CliRunner().invoke(app, ["train", str(source), "-o", str(out), "--resume", "--d-model", "32"])
    assert bad.exit_code == 2 and "differs from this run's in d_ff, d_model" in bad.output
    bad = CliRunner().invoke(app, ["train", str(source), "-o", str(tmp_path / "nothing"), "--resume"])
    assert bad.exit_code == 2 and "cannot resume: checkpoint" in bad.output and "does not exist" in bad.output

    distilled = out / "distilled.pt"
    result = CliRunner().invoke(app, ["distill", str(out / "checkpoint.pt"), "--data", str(source), "-o", str(distilled),
                                      "--molecules", "50", "--elbo-samples", "2", "--epochs", "3", "--elbo-rows", "24",
                                      "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert "Spearman(D, ELBO)" in result.output
    refit = load_model(distilled)
    assert refit.elbo_proposal is not None and len(refit.elbo_proposal) == 32
    assert refit.calibration["mols"] != loaded.calibration["mols"]
    assert refit.meta["distillation"]["config"]["molecules"] == 50
    assert refit.meta["distillation"]["config"]["elbo_rows"] == 24 and refit.meta["distillation"]["config"]["batch_size"] == 16
    card = CliRunner().invoke(app, ["info", "--checkpoint", str(distilled)])
    assert "50 x 2 levels, 3 passes on cpu" in " ".join(card.output.split())
    # The last epoch's Spearman was measured on the head the distillation replaced: the card leaves it out.
    assert "spearman_density_elbo" in refit.metrics and "last epoch: spearman" not in card.output
    assert "last epoch: spearman" in CliRunner().invoke(app, ["info", "--checkpoint", str(out / "checkpoint.pt")]).output
    assert refit.model.config.density.atom_terms and not loaded.model.config.density.atom_terms
    bad = CliRunner().invoke(app, ["distill", str(out / "checkpoint.pt"), "--data", str(source), "--device", "cuda:7"])
    assert bad.exit_code == 2 and "CUDA is not available" in bad.output
    # --proposal-only re-estimates the importance proposal and nothing else, and says what it bought.
    reweighted = tmp_path / "reweighted.pt"
    result = CliRunner().invoke(app, ["distill", str(distilled), "--data", str(source), "-o", str(reweighted),
                                      "--proposal-only"])
    assert result.exit_code == 0, result.output
    assert "ELBO importance proposal re-estimated on" in result.output and "nats (SD)" in result.output
    again = load_model(reweighted)
    assert len(again.elbo_proposal) == 32 and not torch.allclose(again.elbo_proposal, refit.elbo_proposal)
    assert math.isclose(again.elbo_proposal.sum().item(), 1.0, rel_tol=1e-5)
    record = again.meta["elbo_proposal"]
    assert record["elbo_sd_before"] > 0 and record["elbo_sd_after"] > 0 and record["check_molecules"] > 0
    assert again.meta["distillation"] == refit.meta["distillation"] and again.calibration == refit.calibration
    assert all(torch.equal(value, refit.model.state_dict()[key]) for key, value in again.model.state_dict().items())
    card = CliRunner().invoke(app, ["info", "--checkpoint", str(reweighted)])
    assert f"re-estimated on {record['pilot_molecules']:,} training molecules" in " ".join(card.output.split())
    # --add-members 2 keeps the head as member 1 and fits members 2 and 3 on fresh targets; D is their mean. The
    # card's evaluation figures of the old head go; those of the (untouched) sampler stay.
    carded = read_checkpoint(reweighted)
    carded["evaluation"] = {"uniqueness": 0.97, "spearman_density_elbo": 0.8, "auroc_vs_mutants": 0.9,
                           "spearman_density_elbo_corrected_interval": [0.78, 0.83]}
    save_checkpoint(carded, reweighted)
    grown_path = tmp_path / "grown.pt"
    result = CliRunner().invoke(app, ["distill", str(reweighted), "--data", str(source), "-o", str(grown_path),
                                      "--add-members", "2", "--molecules", "50", "--elbo-samples", "2", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "with density members 2-3 (alone:" in " ".join(result.output.split())
    grown = load_model(grown_path)
    assert grown.model.config.density.members == 3 and torch.equal(grown.elbo_proposal, again.elbo_proposal)
    kept = {key: value for key, value in grown.model.state_dict().items() if not key.startswith(("density.members.1.", "density.members.2."))}
    assert all(torch.equal(value, again.model.state_dict()[key]) for key, value in kept.items())
    assert grown.meta["distillation"] == again.meta["distillation"] and grown.calibration != again.calibration
    assert grown.evaluation == {"uniqueness": 0.97}
    assert grown.meta["density_members"][0]["config"]["seed"] == 1  # other molecules and noise than member 1's
    # The new members' starting weights are seeded too: the same command gives the same head.
    repeated_path = tmp_path / "grown_again.pt"
    result = CliRunner().invoke(app, ["distill", str(reweighted), "--data", str(source), "-o", str(repeated_path),
                                      "--add-members", "2", "--molecules", "50", "--elbo-samples", "2", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    repeated = load_model(repeated_path).model.state_dict()
    assert all(torch.equal(value, repeated[key]) for key, value in grown.model.state_dict().items())
    card = " ".join(CliRunner().invoke(app, ["info", "--checkpoint", str(grown_path)]).output.split())
    assert "mean of 3 members" in card and "density members 2-3" in card and "50 x 2 levels on cpu" in card
    # A full refit fits every member together: the members' own records go, the members stay.
    result = CliRunner().invoke(app, ["distill", str(grown_path), "--data", str(source), "-o", str(tmp_path / "refit.pt"),
                                      "--molecules", "50", "--elbo-samples", "2", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    refit_all = load_model(tmp_path / "refit.pt")
    assert refit_all.model.config.density.members == 3 and "density_members" not in refit_all.meta
    bare = CliRunner().invoke(app, ["distill", str(out / "checkpoint.pt"), "--data", str(source), "--add-members", "2"])
    assert bare.exit_code == 2 and "has none: distil it once without --add-members first" in " ".join(bare.output.split())
    # Distilled in place, the run's checkpoint has another density head: resuming says so, no traceback.
    distilled_run = tmp_path / "distilled_run"
    distilled_run.mkdir()
    shutil.copy(distilled, distilled_run / "checkpoint.pt")
    resumed = CliRunner().invoke(app, [*args[:3], str(distilled_run), *args[4:], "--resume"])
    assert resumed.exit_code == 2 and "differs from this run's in density" in resumed.output
    assert "--init-from" in resumed.output
    other = tmp_path / "other.csv"
    example_molecules().iloc[300:400].to_frame().to_csv(other, index=False)
    mismatch = CliRunner().invoke(app, ["distill", str(out / "checkpoint.pt"), "--data", str(other)])
    assert mismatch.exit_code == 2 and "other data" in mismatch.output


def test_size_buckets_keep_every_molecule_once_in_batches_of_similar_size(tmp_path):
    data = qm9_subset(tmp_path, 300)
    plain = Trainer(TrainConfig(model=TINY, batch_size=16), data, tmp_path / "plain")
    bucketed = Trainer(TrainConfig(model=TINY, batch_size=16, size_bucket_batches=8), data, tmp_path / "bucketed")
    for epoch in (0, 1):
        order = bucketed.epoch_order(epoch)
        assert sorted(order.tolist()) == sorted(plain.epoch_order(epoch).tolist())
        assert not np.array_equal(order, bucketed.epoch_order(1 - epoch))  # reshuffled every epoch

    def spread(order):  # mean over full batches of (largest - smallest molecule)
        sizes = data.sizes[order[: len(order) // 16 * 16]].reshape(-1, 16)
        return float((sizes.max(1) - sizes.min(1)).mean())

    assert spread(bucketed.epoch_order(0)) < 0.5 * spread(plain.epoch_order(0))


def test_a_head_above_its_bound_still_learns_and_the_consistency_loss_cannot_hide_there(tmp_path):
    # A drug-like run's head ended at +1,300 nats, where -softplus(-D) is flat: fit through the bound,
    # neither its regression nor the consistency loss had a gradient to bring it back.
    data = qm9_subset(tmp_path, 16)
    trainer = Trainer(TrainConfig(model=TINY), data, tmp_path / "run")
    model = trainer.model
    with torch.no_grad():
        model.density.offset.fill_(1300.0)
        for member in model.density.members:  # a head that reads the states, as a trained one does
            torch.nn.init.normal_(member.cls[-1].weight, std=0.1)
    batch, dist = data.batch(data.indices("train"))
    losses = training_losses(model, batch, dist, trainer.noise, trainer.size_log_probs[dist],
                             trainer.weights, torch.Generator().manual_seed(0))
    (losses["nll"] + losses["consistency"]).backward()
    gradient = torch.cat([p.grad.flatten() for p in model.density.parameters() if p.grad is not None])
    assert gradient.abs().max() > 1e-3
    assert losses["consistency"] > 1e-3  # the flat bound would have made it ~0

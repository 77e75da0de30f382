import re
from dataclasses import replace

import pytest
import torch
from conftest import example_molecules
from typer.testing import CliRunner

from molgen.checkpoint import load_model, read_checkpoint
from molgen.cli import app
from molgen.data import prepare_dataset
from molgen.likelihood import clean_states
from molgen.model import DiScoFormer
from molgen.noise import NoiseProcess
from molgen.training.adapt import extended
from molgen.model.density import NearMissTerm
from molgen.stats import auroc
from molgen.training.near_miss import NearMissConfig, train_classifier, with_near_miss_term
from molgen.training.trainer import TrainConfig, Trainer, TrainingData

TINY = {"d_model": 32, "d_pair": 8, "n_layers": 2, "n_heads": 4, "d_ff": 64}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """An untrained tiny model's checkpoint for 240 QM9 molecules, and its data file: its random states tell
    molecules apart better than those of a tiny model after one epoch, which start alike."""
    folder = tmp_path_factory.mktemp("near_miss")
    path = folder / "molecules.csv"
    example_molecules().iloc[:240].to_frame().to_csv(path, index=False)
    dataset, _ = prepare_dataset(path, use_cache=False)  # as `molgen fit-near-miss --data` prepares it
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(epochs=1, batch_size=32, warmup_steps=2, model=TINY, val_molecules=8),
                      TrainingData.combine([dataset], [path.stem]), folder / "run")
    trainer.save()
    return trainer.checkpoint_path, path


def with_term(model: DiScoFormer) -> DiScoFormer:
    torch.manual_seed(1)
    upgraded = with_near_miss_term(model).eval()
    with torch.no_grad():  # a term far from zero, so that adding it shows
        upgraded.density.near_miss.member.cls[-1].bias.fill_(-3.0)
    return upgraded


def test_the_near_miss_term_is_a_log_probability_added_only_to_the_bounded_density(tiny):
    vocab, batch, model = tiny
    upgraded = with_term(model)
    dist = torch.zeros(batch.mask.shape[0], dtype=torch.long)
    states = clean_states(upgraded, batch, dist, NoiseProcess())
    with torch.no_grad():
        term = upgraded.density.near_miss_term(states, batch.mask)
        plain, bounded = model.density_of(states, batch.mask, dist), upgraded.density_of(states, batch.mask, dist)
        unbounded = upgraded.density_of(states, batch.mask, dist, bound=False)
    assert (term < 0).all() and (term < -1).any()
    assert torch.allclose(bounded, plain + term) and (bounded <= 0).all()
    # What the fits regress (the ELBO) is the head alone: the term never enters a distillation or a loss.
    assert torch.equal(unbounded, model.density_of(states, batch.mask, dist, bound=False))


def test_an_adapted_distribution_keeps_the_head_without_the_term(tiny):
    vocab, batch, model = tiny
    adapted = extended(with_term(model), rank=2).eval()
    own = adapted.config.adapter.distribution
    states = clean_states(adapted, batch, torch.full((batch.mask.shape[0],), own), NoiseProcess())
    with torch.no_grad():
        for index, expected_term in ((own, False), (0, True), (adapted.null_distribution, True)):
            dist = torch.full((batch.mask.shape[0],), index)
            extra = adapted.adapters.density_term(states, batch.mask, dist)
            head = adapted.density(states, batch.mask, extra=extra)
            term = adapted.density.near_miss_term(states, batch.mask)
            assert torch.allclose(adapted.density_of(states, batch.mask, dist), head + term if expected_term else head)


def test_cli_fit_near_miss_learns_its_mutants_and_changes_nothing_else(small_run, tmp_path):
    checkpoint, source = small_run
    output = tmp_path / "near_miss.pt"
    result = CliRunner().invoke(app, ["fit-near-miss", str(checkpoint), "--data", str(source), "-o", str(output),
                                      "--molecules", "150", "--mutants", "150", "--epochs", "100",
                                      "--check-molecules", "20"])
    assert result.exit_code == 0, result.output
    assert re.search(r"AUROC of D against single-edit mutants of \d+ held-out molecules: 0\.\d+ -> 0\.\d+",
                     " ".join(result.output.split()))
    fitted, before = load_model(output), read_checkpoint(checkpoint)
    report = fitted.meta["near_miss"]
    assert fitted.model.config.density.near_miss_term
    assert report["positives"] == 150 and 100 <= report["negatives"] <= 150 and report["epochs"] == 100
    assert 0 <= report["auroc_fit_rows_term"] <= 1 and 0 <= report["auroc_vs_mutants_after"] <= 1
    assert report["median_term_held_out_nats"] <= 0 and report["median_term_mutants_nats"] <= 0
    weights = fitted.model.state_dict()
    changed = {name for name, value in before["ema"].items() if not torch.equal(weights[name], value)}
    assert not changed  # every weight but the new term's is the source's
    assert {name for name in weights if name not in before["ema"]} == {
        name for name in weights if name.startswith("density.near_miss.")}
    # Calibrated with the term on the held-out molecules (the untrained source had no calibration yet).
    assert before["calibration"] == {} and max(fitted.calibration["molecules"]) <= 0
    card = CliRunner().invoke(app, ["info", "--checkpoint", str(output)])
    assert "near-miss term" in card.output
    # A model of other data is refused in one line.
    other = tmp_path / "other.csv"
    other.write_text("smiles\nCCO\nCCN\nCCC\n")
    bad = CliRunner().invoke(app, ["fit-near-miss", str(checkpoint), "--data", f"molecules={other}"])
    assert bad.exit_code == 2 and "other data" in bad.output


def test_with_near_miss_term_replaces_an_earlier_term(tiny):
    _, _, model = tiny
    first = with_term(model)
    second = with_near_miss_term(first)
    assert second.config.density == replace(model.config.density, near_miss_term=True)
    assert not torch.equal(first.density.near_miss.member.cls[-1].bias, second.density.near_miss.member.cls[-1].bias)


def synthetic_states(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """States as a trained backbone gives them: one large common part, molecules apart by a tenth of it;
    the real ones (label 1) shifted in one [CLS] feature and one atom feature by one to two of those tenths."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(16, generator=torch.Generator().manual_seed(99))
    states = common + 0.1 * torch.randn(count, 7, 16, generator=generator)
    labels = (torch.arange(count) % 2).float()
    states[:, 1, 3] += 0.2 * labels
    states[:, 2:, 5] += 0.1 * labels[:, None]
    masks = torch.ones(count, 5, dtype=torch.bool)
    masks[::3, 3:] = False
    return states, masks, labels


def test_the_classifier_learns_a_difference_small_beside_the_states_common_part():
    states, masks, labels = synthetic_states(600, seed=0)
    term = NearMissTerm(16)
    epochs, fit_auroc = train_classifier(term, states, masks, labels, NearMissConfig(epochs=40, batch_size=64))
    assert epochs == 40 and fit_auroc > 0.95
    assert torch.allclose(term.cls_mean, states[:, 1].mean(0))  # standardised to the states it was fit on
    fresh, fresh_masks, fresh_labels = synthetic_states(400, seed=1)
    with torch.no_grad():
        logits = term(fresh, fresh_masks).numpy()
    real = fresh_labels.numpy() == 1
    assert auroc(logits[real], logits[~real]) > 0.93

"""Property head, targets and guided sampling (issue 44)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from test_distill import trained

from molgen.checks import CheckSpecError
from molgen.guidance import Target, parse_targets, targets_log_likelihood, window_log_likelihood
from molgen.model import DiScoConfig, DiScoFormer, model_denoiser
from molgen.model.properties import PropertyConfig
from molgen.noise import NoiseProcess
from molgen.sampler import Denoised, SamplerSettings, sample
from molgen.training.properties import PropertyFitConfig, fit_property_head, property_table


def test_targets_parse_every_form_and_refuse_bad_ones():
    assert parse_targets(["qed>=0.6", "TPSA < 40", "logp=1..3", "mw > 1e2"]) == (
        Target("qed", low=0.6), Target("tpsa", high=40.0), Target("clogp", 1.0, 3.0), Target("mw", low=100.0))
    assert [str(w) for w in Target.parse("clogp=1..3").windows()] == ["clogp>=1", "clogp<=3"]
    assert str(Target.parse("clogp = 2..2.5")) == "clogp=2..2.5"
    for bad, message in (("qed", "cannot parse"), ("qed=0.5", "give a range"), ("clogp=3..1", "low end"),
                         ("potency>=3", "unknown property"), ("qed>=0.1..0.2", "a range takes")):
        with pytest.raises(CheckSpecError, match=message):
            Target.parse(bad)


def test_window_log_likelihood_is_the_gaussian_probability_and_finite_far_away():
    mean = torch.tensor([-40.0, -3.0, 0.0, 1.5, 2.0, 5.0, 40.0], dtype=torch.float64)
    std = torch.full_like(mean, 0.7)
    for low, high in ((1.0, 3.0), (-math.inf, 3.0), (1.0, math.inf)):
        got = window_log_likelihood(mean, std, low, high)
        with np.errstate(divide="ignore"):  # scipy's difference rounds to 0 far out, where ours stays exact
            expected = np.log(norm.cdf((high - mean.numpy()) / 0.7) - norm.cdf((low - mean.numpy()) / 0.7))
        near = np.isfinite(expected) & (expected > -600)
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got.numpy()[near], expected[near], rtol=1e-6, atol=1e-9)
        # Far outside it keeps pointing back: the log-likelihood falls as the mean moves away.
        assert got[0] < got[1] if math.isfinite(low) else got[-1] < got[-2]


def test_several_targets_add_and_an_unknown_property_is_refused():
    mean, std = torch.tensor([[0.5, 2.0]]), torch.tensor([[0.1, 0.5]])
    both = targets_log_likelihood(mean, std, ("qed", "clogp"), parse_targets(["qed>=0.4", "clogp<=2"]))
    one = window_log_likelihood(mean[:, 0], std[:, 0], 0.4, math.inf)
    two = window_log_likelihood(mean[:, 1], std[:, 1], -math.inf, 2.0)
    torch.testing.assert_close(both, one + two)
    with pytest.raises(CheckSpecError, match="cannot guide towards tpsa"):
        targets_log_likelihood(mean, std, ("qed", "clogp"), parse_targets(["tpsa<=40"]))


def _toy_denoiser(shift: float):
    """Estimates that read the noisy atom channels; with ``shift`` a constant push up channel 0."""
    def denoiser(z_atoms, z_bonds, t, self_cond):
        atoms = (4 * z_atoms).softmax(-1)
        bonds = (4 * z_bonds).softmax(-1)
        guidance = None
        if shift:
            push = torch.zeros_like(z_atoms)
            push[..., 0] = shift
            guidance = (push, torch.zeros_like(z_bonds))
        return Denoised(atoms, bonds, torch.zeros(z_atoms.shape[0]), guidance)
    return denoiser


@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_sampler_follows_the_guidance_term(corrector_steps):
    mask = torch.ones(64, 4, dtype=torch.bool)
    settings = SamplerSettings(steps=20, corrector_steps=corrector_steps)

    def channel_zero(shift):
        result = sample(_toy_denoiser(shift), mask, 3, 2, NoiseProcess(), settings, torch.Generator().manual_seed(0))
        return float(result.atoms[..., 0].mean())

    plain, pushed = channel_zero(0.0), channel_zero(3.0)
    assert pushed > plain + 0.2
    assert channel_zero(3.0) == pushed  # seeded


def _with_head(model: DiScoFormer, names=("mw", "qed")) -> DiScoFormer:
    torch.manual_seed(1)
    return model.with_new_module("properties", properties=PropertyConfig(names, [100.0, 0.5], [20.0, 0.1]))


def test_property_head_is_added_without_changing_the_model_and_round_trips(tiny):
    vocab, batch, model = tiny
    from tiny_model import clean_inputs

    inputs, _ = clean_inputs(batch, vocab)
    headed = _with_head(model).eval()
    before, after = model(*inputs), headed(*inputs)
    torch.testing.assert_close(after.density, before.density)
    torch.testing.assert_close(after.atom_logits, before.atom_logits)
    prediction = headed.properties(after.final_states, batch.mask)
    assert prediction.mean.shape == prediction.std.shape == (len(batch.mask), 2)
    assert torch.isfinite(prediction.mean).all() and (prediction.std > 0).all()
    config = DiScoConfig.from_dict(headed.config.to_dict())
    assert config.properties == headed.config.properties
    rebuilt = DiScoFormer(config)
    rebuilt.load_state_dict(headed.state_dict())
    torch.testing.assert_close(rebuilt.properties(after.final_states, batch.mask).mean, prediction.mean)
    assert DiScoConfig.from_dict({k: v for k, v in model.config.to_dict().items() if k != "properties"}).properties.names == ()


def test_guided_denoiser_gives_the_window_gradient_and_refuses_a_model_without_head(tiny):
    vocab, batch, model = tiny
    from tiny_model import noisy_inputs

    headed = _with_head(model).eval()
    t = torch.full((len(batch.mask),), 0.3)
    z_atoms, z_bonds, noise = noisy_inputs(batch, vocab, t)
    dist = torch.zeros(len(batch.mask), dtype=torch.long)
    plain = model_denoiser(headed, batch.mask, dist, noise)(z_atoms, z_bonds, t, None)
    guided = model_denoiser(headed, batch.mask, dist, noise, parse_targets(["mw>=150"]), 2.0)(z_atoms, z_bonds, t, None)
    torch.testing.assert_close(guided.atoms, plain.atoms)
    grad_atoms, grad_bonds = guided.guidance
    assert grad_atoms.shape == z_atoms.shape and grad_bonds.shape == z_bonds.shape
    assert grad_atoms.abs().sum() > 0
    torch.testing.assert_close(grad_bonds, grad_bonds.transpose(1, 2))
    assert (grad_atoms[~batch.mask] == 0).all()
    # The guidance term is the scaled gradient of the window log-likelihood: a small step along it raises it.
    def log_likelihood(za, zb):
        with torch.no_grad():
            output = headed(za, zb, batch.mask, noise.atoms.logsnr(t), noise.bonds.logsnr(t), dist)
            prediction = headed.properties(output.final_states, batch.mask)
        return targets_log_likelihood(prediction.mean, prediction.std, ("mw", "qed"), parse_targets(["mw>=150"]))
    step = 1e-3 / grad_atoms.abs().max()
    assert (log_likelihood(z_atoms + step * grad_atoms, z_bonds + step * grad_bonds) >= log_likelihood(z_atoms, z_bonds) - 1e-6).all()
    with pytest.raises(ValueError, match="no property head"):
        model_denoiser(model, batch.mask, dist, noise, parse_targets(["mw>=150"]))


def test_property_table_computes_rdkit_values_and_marks_unparsable_rows():
    table = property_table(["CCO", "not a molecule", "c1ccccc1O"], ("mw", "hbd", "rings"))
    np.testing.assert_allclose(table[0], [46.069, 1, 0], atol=1e-3)
    assert np.isnan(table[1]).all()
    np.testing.assert_allclose(table[2], [94.113, 1, 1], atol=1e-3)


def test_property_head_fit_learns_from_rdkit_values_and_touches_nothing_else(tmp_path):
    data, trainer = trained(tmp_path)
    config = PropertyFitConfig(names=("mw", "hba"), molecules=100, steps=150, batch_size=32, lr=3e-3,
                               check_molecules=30, workers=1)
    before = {name: value.clone() for name, value in trainer.ema.state_dict().items()}
    model, report = fit_property_head(trainer.ema, trainer.noise, data, config)
    after = model.state_dict()
    assert {name for name in after if name not in before} == {name for name in after if name.startswith("properties.")}
    assert all(torch.equal(before[name], after[name]) for name in before)
    held_out = report["held_out"]
    assert held_out["times"][0] == 0.0 and held_out["molecules"] == 30
    mw = held_out["properties"]["mw"]
    # Clean molecules: their weight is read well; pure noise: no better than the mean.
    assert mw["r2"][0] > 0.5
    assert mw["r2"][-1] < mw["r2"][0]
    assert all(0.0 <= share <= 1.0 for share in mw["within_1sd"])


def test_generate_cli_guides_towards_a_narrow_window_and_reports_it(tmp_path, tiny_checkpoint):
    """The bundled model's property head: guidance multiplies the samples inside cLogP 2..2.5 and
    TPSA <= 40 (2.8% of QM9; 3% of 200 unguided samples, 42% at scale 4; benchmarks/guidance.py)."""
    from typer.testing import CliRunner

    import pandas as pd
    from molgen.cli import app

    runner = CliRunner()
    shares = {}
    for scale in ("0", "8"):
        out = tmp_path / f"guided_{scale}.csv"
        result = runner.invoke(app, ["generate", "-n", "48", "--steps", "40", "--seed", "1", "-o", str(out),
                                     "--target", "clogp=2..2.5", "--target", "tpsa<=40", "--guidance-scale", scale])
        assert result.exit_code == 0, result.output
        assert "on target (RDKit)" in result.output
        frame = pd.read_csv(out)
        assert len(frame) == 48 and frame["on_target"].dtype == bool
        # on_target is RDKit's verdict on the window, and the window's failures are named.
        inside = frame["clogp"].between(2, 2.5) & (frame["tpsa"] <= 40)
        assert (frame["on_target"] == inside).all()
        assert frame.loc[~inside, "failed_checks"].str.contains("clogp|tpsa").all()
        shares[scale] = frame["on_target"].mean()
    assert shares["8"] >= shares["0"] + 0.2

    # A model without a property head, and a target that does not parse: clear messages, exit code 2.
    result = runner.invoke(app, ["generate", "-n", "4", "--steps", "5", "-o", str(tmp_path / "x.csv"),
                                 "--checkpoint", str(tiny_checkpoint), "--target", "qed>=0.5"])
    assert result.exit_code == 2 and "no property head" in result.output
    result = runner.invoke(app, ["generate", "-n", "4", "-o", str(tmp_path / "x.csv"), "--target", "qed=0.5"])
    assert result.exit_code == 2 and "give a range" in result.output

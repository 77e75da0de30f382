"""`molgen adapt`: a new distribution as a [DIST] embedding and gated low-rank adapters (issue 45)."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import example_molecules
from tiny_model import clean_inputs
from typer.testing import CliRunner

from molgen.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from molgen.cli import app
from molgen.model.config import AdapterConfig
from molgen.pyg import MoleculeGraphs
from molgen.scoring import Scorer
from molgen.training.adapt import (AdaptConfig, adapt, adapted_model, extended, held_out_bounds, read_set,
                                     split_rows)

runner = CliRunner()


def test_adapters_leave_every_other_distribution_bit_identical(tiny):
    vocab, batch, model = tiny
    inputs, _ = clean_inputs(batch, vocab)
    grown = extended(model, rank=4).eval()
    for parameter in grown.adapters.parameters():  # as if trained: no longer zero
        torch.nn.init.normal_(parameter)
    k = model.config.num_distributions
    for base_id, grown_id in ((0, 0), (1, 1), (k, k + 1)):  # the base's distributions, then its null id (moved up)
        x = list(inputs)
        x[5] = torch.full_like(x[5], base_id)
        before = model(*x)
        x[5] = torch.full_like(x[5], grown_id)
        after = grown(*x)
        assert torch.equal(before.atom_logits, after.atom_logits) and torch.equal(before.density, after.density)
    x = list(inputs)
    x[5] = torch.full_like(x[5], k)  # the new distribution: its embedding starts as the null one, the adapters act
    assert not torch.equal(grown(*x).atom_logits, model(*list(inputs[:5]) + [torch.full_like(x[5], k)]).atom_logits)
    with pytest.raises(ValueError):
        AdapterConfig(rank=-1)


def _set_with_bad_rows(tmp_path):
    smiles = example_molecules().iloc[:200].tolist() + ["not a smiles", "ClCCl", "C" * 12, ""]
    path = tmp_path / "series.csv"
    pd.DataFrame({"id": range(len(smiles)), "SMILES": smiles}).to_csv(path, index=False)
    return path, len(smiles)


def test_adapt_accounts_for_every_row_trains_only_the_new_parts_and_resumes(tmp_path, tiny_checkpoint):
    path, rows = _set_with_bad_rows(tmp_path)
    base = load_model(tiny_checkpoint)
    encoded, smiles = read_set(path, "SMILES", base.vocab)
    assert len(encoded.status) == rows and len(smiles) == len(encoded.positions) == 200
    assert {"invalid_smiles", "out_of_domain"} <= set(encoded.status)
    before = {key: value.clone() for key, value in base.model.state_dict().items()}
    work = tmp_path / "work.pt"
    config = AdaptConfig(name="series", rank=2, minutes=5, max_steps=6, batch_size=16, elbo_samples=4,
                         density_molecules=64, density_samples=4, density_epochs=20)
    payload, card = adapt(base, encoded, smiles, config, base.digest, "tiny.pt", work)
    assert card["steps"] == 6 and sum(card["molecules"]["statuses"].values()) == rows
    assert set(card["held_out"]) == {"adapted", "null (zero-shot)", "qm9 (zero-shot)", "null (zero-shot, the set's sizes)"}
    assert all(torch.equal(before[key], value) for key, value in base.model.state_dict().items())  # base untouched
    assert len(payload["calibration"]) == 101 and payload["calibration"] == sorted(payload["calibration"])
    fit = card["density_term"]
    assert fit["molecules"] == 64 and -1 <= fit["spearman_density_elbo_before"] <= 1
    assert 0 <= fit["epochs_kept"] <= 20 and -1 <= fit["spearman_density_elbo_after"] <= 1
    assert any(key.startswith("adapters.density.") for key in payload["weights"])
    # The zero-shot rows, measured again on the adapted file: the null id's, and under the set's own sizes
    # (derived from it by its size term alone) what a full pass with that size table gives.
    loaded = adapted_model(base, payload)
    null = loaded.model.config.num_distributions
    # The set's size term, exactly: sizes the set lacks cost what the ELBO's size term says they do.
    own_sizes = torch.tensor(loaded.size_distributions[1])
    shift = payload["weights"]["adapters.size_shift"]
    expected = torch.log(own_sizes + 1e-12) - torch.log(torch.tensor(loaded.size_distributions[null]) + 1e-12)
    assert torch.allclose(shift, expected)

    def scorer(dist):
        return Scorer(loaded, dist).score_smiles(["CCO", "CC=O"])["log_density"].to_numpy()

    before_series, before_qm9 = scorer("series"), scorer("qm9")
    with torch.no_grad():
        loaded.model.adapters.size_shift[3] -= 30.0  # as for a size the set lacks: both molecules have 3 atoms
    assert (scorer("series") < before_series - 1).all() and (scorer("qm9") == before_qm9).all()
    with torch.no_grad():
        loaded.model.adapters.size_shift[3] += 30.0
    # A file written before the size term loads, without it.
    old_file = {**payload, "weights": {k: v for k, v in payload["weights"].items() if k != "adapters.size_shift"}}
    assert not adapted_model(base, old_file).model.adapters.size_shift.any()
    tables = torch.log(torch.tensor(loaded.size_distributions, dtype=torch.float32) + 1e-12)
    own = tables.clone()
    own[null] = tables[1]
    graphs = MoleculeGraphs.from_dense(encoded.atoms, encoded.bonds, encoded.sizes)
    checked = split_rows(len(encoded.positions), config.val_fraction, config.seed)[1][: config.check_molecules]
    for label, table in (("null (zero-shot)", tables), ("null (zero-shot, the set's sizes)", own)):
        bounds = held_out_bounds(loaded.model, loaded, graphs, checked, null, table, config.elbo_samples, config.seed)
        assert card["held_out"][label]["nll_nats"] == pytest.approx(bounds.mean(), abs=1e-4), label
    # Resume: the same run continues from its work file to more steps.
    more, card = adapt(base, encoded, smiles, AdaptConfig(**{**config.to_dict(), "max_steps": 9}), base.digest, "tiny.pt", work)
    assert card["steps"] == 9
    loaded = adapted_model(base, more)
    assert loaded.distributions == ["qm9", "series"] and loaded.model.config.num_distributions == 2
    assert len(loaded.size_distributions) == 3 and "series" in loaded.calibration
    with pytest.raises(CheckpointError, match="load it with the base it was adapted from"):
        adapted_model(base, {**more, "base_digest": "0" * 64})


def test_the_same_seed_gives_the_same_adapter(tmp_path, tiny_checkpoint):
    path, _ = _set_with_bad_rows(tmp_path)
    base = load_model(tiny_checkpoint)
    encoded, smiles = read_set(path, "SMILES", base.vocab)
    config = AdaptConfig(name="series", rank=2, max_steps=3, batch_size=16, elbo_samples=2, check_molecules=16,
                         density_molecules=32, density_samples=2, density_epochs=3)

    def weights(seed):
        torch.randn(seed + 1)  # a different global generator state each time: adapt must not depend on it
        return adapt(base, encoded, smiles, replace(config, seed=seed), base.digest, "tiny.pt")[0]["weights"]

    first, again, other = weights(0), weights(0), weights(1)
    assert first.keys() == again.keys() and all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_the_held_out_rows_share_their_noise(tmp_path, tiny_checkpoint):
    # Untrained, the new distribution is the null one with the set's sizes: with the same noise for every
    # row of the table, its NLL is that row's to float precision, not within Monte Carlo error.
    path, _ = _set_with_bad_rows(tmp_path)
    base = load_model(tiny_checkpoint)
    encoded, smiles = read_set(path, "SMILES", base.vocab)
    config = AdaptConfig(name="series", rank=2, max_steps=0, elbo_samples=2, check_molecules=32,
                         density_molecules=32, density_samples=2, density_epochs=2)
    card = adapt(base, encoded, smiles, config, base.digest, "tiny.pt")[1]
    assert card["steps"] == 0
    own_sizes = card["held_out"]["null (zero-shot, the set's sizes)"]["nll_nats"]
    assert card["held_out"]["adapted"]["nll_nats"] == pytest.approx(own_sizes, abs=1e-3)


def test_adapt_cli_writes_a_small_file_that_generate_score_and_info_use(tmp_path, tiny_checkpoint):
    path, rows = _set_with_bad_rows(tmp_path)
    out = tmp_path / "series.pt"
    result = runner.invoke(app, ["adapt", str(path), "-o", str(out), "--base", str(tiny_checkpoint), "--smiles-column",
                                 "SMILES", "--max-steps", "4", "--batch-size", "16", "--rank", "2"])
    assert result.exit_code == 0, result.output
    assert "200 ok" in result.output and "null (zero-shot)" in result.output
    assert out.stat().st_size < 2_000_000 and not (tmp_path / "series.pt.partial").exists()
    assert read_checkpoint(out, "molgen-adapter-1")["name"] == "series"
    generated = tmp_path / "g.csv"
    result = runner.invoke(app, ["generate", "-n", "6", "--steps", "4", "--checkpoint", str(out), "--dist", "series",
                                 "-o", str(generated)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(generated)) == 6
    scored = tmp_path / "s.csv"
    result = runner.invoke(app, ["score", str(path), "--smiles-column", "SMILES", "--checkpoint", str(out), "--dist",
                                 "series", "-o", str(scored)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(scored)) == rows
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "adapter: series" in result.output
    # Its base is not where it was: the adapter says what it needs; --base would give it.
    payload = read_checkpoint(out, "molgen-adapter-1")
    save_checkpoint({**payload, "base_name": str(tmp_path / "gone" / "base.pt")}, tmp_path / "orphan.pt", "molgen-adapter-1")
    result = runner.invoke(app, ["info", str(tmp_path / "orphan.pt")])
    assert result.exit_code == 2 and "which is not here" in result.output


def test_the_budget_covers_the_whole_run(tmp_path, tiny_checkpoint, monkeypatch):
    import molgen.training.adapt as adapt_module

    path, _ = _set_with_bad_rows(tmp_path)
    base = load_model(tiny_checkpoint)
    encoded, smiles = read_set(path, "SMILES", base.vocab)
    config = AdaptConfig(name="series", rank=2, batch_size=16, elbo_samples=4, density_molecules=64,
                         density_samples=4, density_epochs=5)
    # Figures said to take 30 s: a half-minute budget leaves no training, a 0.55-minute one about 3 s of it.
    monkeypatch.setattr(adapt_module, "figures_seconds", lambda *args: 30.0)
    _, card = adapt(base, encoded, smiles, replace(config, minutes=0.5), base.digest, "tiny.pt")
    assert card["steps"] == 0 and card["figures_seconds"]["estimated"] == 30.0
    _, card = adapt(base, encoded, smiles, replace(config, minutes=0.55), base.digest, "tiny.pt")
    # Training stops at the first step past its budget (3 s less the set-up), however slow a step is on a
    # loaded machine.
    per_step = card["training_seconds"] / max(card["steps"], 1)
    assert card["steps"] > 0 and card["training_seconds"] < 3.0 + 2 * per_step
    monkeypatch.undo()
    # The real estimate (set against what the figures took on drug-like sets in benchmarks/adapt.py; a tiny
    # model's figures are per-call overhead).
    _, card = adapt(base, encoded, smiles, replace(config, max_steps=2), base.digest, "tiny.pt")
    assert 0 < card["figures_seconds"]["estimated"] < 60 and card["figures_seconds"]["taken"] > 0
    result = runner.invoke(app, ["adapt", str(path), "-o", str(tmp_path / "none.pt"), "--base", str(tiny_checkpoint),
                                 "--smiles-column", "SMILES", "--minutes", "0", "--rank", "2"])
    assert result.exit_code == 0 and "no training step fitted in --minutes 0" in result.output

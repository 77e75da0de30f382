import numpy as np
import pytest
import torch
from conftest import example_molecules
from tiny_model import SMILES

from molgen.checkpoint import BUNDLED, load_model, read_checkpoint, save_checkpoint
from molgen.likelihood import log_density
from molgen.model import upgrade_state_dict
from molgen.noise import NoiseProcess
from molgen.scoring import density_percentile


def test_save_then_load_gives_identical_outputs(tiny, tmp_path):
    vocab, batch, model = tiny
    noise = NoiseProcess()
    path = tmp_path / "model.pt"
    save_checkpoint({
        "model_config": model.config.to_dict(), "vocab": vocab.to_dict(), "noise": noise.to_dict(),
        "distributions": ["a", "b"], "size_distributions": [[0.1] * 10] * 3, "ema": model.state_dict(),
    }, path)
    loaded = load_model(path)
    dist = torch.zeros(len(SMILES), dtype=torch.long)
    assert torch.equal(log_density(model, batch, dist, noise), log_density(loaded.model, batch, dist, loaded.noise))
    assert loaded.vocab == vocab
    with pytest.raises(ValueError, match="not a checkpoint: not a PyTorch file"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        read_checkpoint(tmp_path / "junk.pt")


def test_the_bundled_checkpoint_loads_through_the_key_migration_with_every_tensor_kept():
    stored = torch.load(BUNDLED, map_location="cpu", weights_only=True)
    assert "density_head.0.weight" in stored["ema"] and "repair_pairs.0.weight" in stored["ema"]  # the old layout
    assert "density_members" in stored["model_config"]
    loaded = load_model()
    config = loaded.model.config
    assert (config.density.atom_terms, config.density.members) == (True, 5)
    assert (config.repair.width, config.repair.pair_width, config.repair.min_logsnr) == (256, 128, 2.0)
    state = loaded.model.state_dict()
    renamed = upgrade_state_dict(stored["ema"])
    assert set(renamed) == set(state)  # load_state_dict was strict: nothing missing, nothing left over
    assert all(torch.equal(renamed[key].float(), state[key]) for key in state)
    assert torch.equal(state["density.members.2.cls.0.weight"], stored["ema"]["density_extra_members.1.0.0.weight"].float())


def test_the_density_head_is_a_log_probability_and_percentiles_below_the_top_do_not_move():
    import molgen

    model = molgen.load()
    tiny = ["N#N", "O=CC#C", "N#CC=O", "C", "O", "N", "C#C", "C=O"]
    scored = model.score(tiny + example_molecules().tolist())
    assert (scored["log_density"] <= 0).all()  # N#CC=O was +5.4 nats before the bound
    assert scored.loc[2, "log_density"] > scored.loc[0, "log_density"] > -0.2  # the order kept, just below 0
    generated = model.generate(40, seed=1, steps=20, apply_filters=False)
    assert (generated["log_density"].dropna() <= 0).all()
    # Percentiles read against the stored quantiles, bounded the same way: unchanged below the top interval.
    stored = torch.load(BUNDLED, map_location="cpu", weights_only=True)["calibration"]["qm9"]
    typical = scored[scored["density_percentile"] < 99]
    raw = typical["log_density"].to_numpy()  # below -12.4 nats the bound moves D by under 1e-5 nats
    np.testing.assert_allclose(typical["density_percentile"], density_percentile(raw, stored), atol=1e-3)


def test_bundled_models_load_by_name_and_a_distribution_picks_the_model_that_has_it(tmp_path, monkeypatch,
                                                                                    tiny_checkpoint):
    """`--checkpoint qm9_moses` is the shipped drug-like model wherever molgen is installed, and
    `--dist moses` without a checkpoint uses it; the default model stays the QM9 one."""
    import molgen.checkpoint as checkpoint
    from molgen.checkpoint import FORMAT, load_model, model_path, read_checkpoint, save_checkpoint
    from molgen.scoring import distribution_index

    weights = tmp_path / "weights"
    weights.mkdir()
    qm9 = read_checkpoint(tiny_checkpoint)
    save_checkpoint(qm9, weights / "qm9.pt")
    calibration = qm9.get("calibration", {})
    save_checkpoint({**qm9, "distributions": ["qm9", "moses"], "calibration": {**calibration, "moses": calibration.get("qm9")}},
                    weights / "qm9_moses.pt", FORMAT)
    monkeypatch.setattr(checkpoint, "WEIGHTS", weights)
    monkeypatch.setattr(checkpoint, "BUNDLED", weights / "qm9.pt")

    assert model_path() == weights / "qm9.pt"
    assert model_path(None, "qm9") == weights / "qm9.pt" and model_path(None, "null") == weights / "qm9.pt"
    assert model_path(None, "moses") == weights / "qm9_moses.pt"
    assert model_path(None, "chembl") == weights / "qm9.pt"  # whose error then lists what it has
    assert model_path("qm9_moses") == weights / "qm9_moses.pt"
    own = tmp_path / "qm9_moses"  # a file of that name in the working directory wins over the bundled one
    own.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert model_path("qm9_moses").resolve() == own
    monkeypatch.chdir(weights)
    assert load_model("qm9_moses").distributions == ["qm9", "moses"]
    with pytest.raises(ValueError, match=r"the bundled model qm9_moses has it: --checkpoint qm9_moses"):
        distribution_index(load_model(), "moses")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("qm9_mooses")

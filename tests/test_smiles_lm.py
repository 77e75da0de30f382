import numpy as np
import pytest

from molgen.baselines.smiles_lm import (
    SmilesLMConfig,
    build_vocabulary,
    load_smiles_lm,
    tokenize,
    train_smiles_lm,
    training_record,
)

TRAIN = ["CCO", "CC(=O)O", "c1ccccc1", "CCN", "C1CCCCC1", "CC#N", "OC1CCOC1", "CC(C)O", "NC(=O)N", "[NH3+]CC(=O)[O-]",
         "CCOC", "CC(=O)C", "OCC(O)CO", "C1CC1", "CN(C)C", "O=CC=O", "CC=CC", "N#CC#N", "FC(F)F", "CCCCO"]


def test_tokenizer_spells_the_whole_string_and_keeps_bracket_atoms_whole():
    assert tokenize("[NH3+]CC(=O)[O-]") == ["[NH3+]", "C", "C", "(", "=", "O", ")", "[O-]"]
    assert tokenize("ClCBr") == ["Cl", "C", "Br"]
    assert tokenize("C&C") is None


def test_smiles_lm_overfits_scores_and_samples_reproducibly(tmp_path):
    config = SmilesLMConfig(vocab=build_vocabulary(TRAIN), max_len=24, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    path = tmp_path / "lm.pt"
    model = train_smiles_lm(TRAIN, TRAIN[:5], path, epochs=40, batch_size=10, lr=3e-3, config=config, log=lambda m: None)
    history = training_record(path)["history"]
    assert history[-1]["train_nll"] < 0.5 * history[0]["train_nll"]
    nll = model.nll(TRAIN[:3] + ["C1CC", "CSC", None])  # unparsable, unknown token (S), empty
    assert np.all(np.isfinite(nll[:3])) and np.all(nll[:3] > 0)
    assert np.isnan(nll[3:]).all()
    assert np.allclose(load_smiles_lm(path).nll(TRAIN), model.nll(TRAIN))
    assert model.sample(16, seed=5) == model.sample(16, seed=5)
    # Resuming a finished run trains nothing more and returns the same best weights.
    again = train_smiles_lm(TRAIN, TRAIN[:5], path, epochs=40, batch_size=10, config=config, log=lambda m: None)
    assert np.allclose(again.nll(TRAIN), model.nll(TRAIN))


def test_sample_strings_end_at_eos_and_never_contain_special_tokens(tmp_path):
    config = SmilesLMConfig(vocab=build_vocabulary(TRAIN), max_len=24, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    model = train_smiles_lm(TRAIN, TRAIN[:5], tmp_path / "lm.pt", epochs=1, batch_size=10, config=config,
                            log=lambda m: None)
    for text in model.sample(30, seed=1):
        assert "<" not in text
    with pytest.raises(ValueError, match="not a molgen-smiles-lm-1 checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"")
        import torch

        torch.save({"format": "other"}, tmp_path / "junk.pt")
        load_smiles_lm(tmp_path / "junk.pt")


def test_training_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """A run checkpointed after every step and killed mid-epoch continues where it stopped: its final
    weights equal those of a run that was never stopped."""
    import torch

    config = SmilesLMConfig(vocab=build_vocabulary(TRAIN), max_len=24, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    train_smiles_lm(TRAIN, TRAIN[:5], tmp_path / "straight.pt", epochs=1.5, batch_size=4, config=config,
                    log=lambda m: None)

    class Killed(Exception):
        pass

    def killed_at_the_third_checkpoint(message, calls=[]):
        calls.append(message)
        if len(calls) == 3:  # log comes before the save: checkpoints 1 and 2 (steps 1, 2) are on disk
            raise Killed

    with pytest.raises(Killed):
        train_smiles_lm(TRAIN, TRAIN[:5], tmp_path / "stopped.pt", epochs=1.5, batch_size=4, config=config,
                        checkpoint_minutes=0, log=killed_at_the_third_checkpoint)
    assert training_record(tmp_path / "stopped.pt")["step"] == 2
    train_smiles_lm(TRAIN, TRAIN[:5], tmp_path / "stopped.pt", epochs=1.5, batch_size=4, config=config,
                    checkpoint_minutes=0, log=lambda m: None)
    straight, resumed = (torch.load(tmp_path / name, weights_only=True)["last"] for name in ("straight.pt", "stopped.pt"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    record = training_record(tmp_path / "stopped.pt")
    assert record["step"] == 8 and record["epoch"] == 1.6  # 5 steps per epoch: round(7.5) = 8

"""The shipped drug-like model (molgen/weights/qm9_moses.pt, QM9 and MOSES in one DiScoFormer) on real
MOSES molecules: what `--dist moses` gives a user who installed molgen and nothing else."""

import pandas as pd
from conftest import shared_file
from rdkit import Chem
from typer.testing import CliRunner

from molgen.checkpoint import WEIGHTS, load_model
from molgen.cli import app

runner = CliRunner()
MOSES_ELEMENTS = {"C", "N", "O", "S", "F", "Cl", "Br"}


def test_the_bundled_models_fit_in_a_wheel():
    sizes = {path.name: path.stat().st_size for path in WEIGHTS.glob("*.pt")}
    assert set(sizes) == {"qm9.pt", "qm9_moses.pt"}
    assert sum(sizes.values()) < 50e6, sizes
    assert load_model("qm9_moses").distributions == ["qm9", "moses"]


def test_score_dist_moses_takes_every_row_of_a_screening_file(tmp_path):
    source = tmp_path / "screen.csv"
    rows = pd.read_csv(shared_file("moses/test.csv.gz"), nrows=300)
    rows.insert(0, "compound_id", [f"M{i}" for i in range(len(rows))])
    rows.to_csv(source, index=False)
    result = runner.invoke(app, ["score", str(source), "--dist", "moses", "--smiles-column", "SMILES",
                                 "-o", str(tmp_path / "scored.csv")])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert scored["compound_id"].tolist() == rows["compound_id"].tolist()  # input columns kept, in order
    assert (scored["status"] == "ok").all(), scored["reason"].value_counts()
    assert scored["log_density"].between(-1e4, 0).all()
    assert scored["density_percentile"].between(0, 100).all()
    # Held-out MOSES molecules are typical of the distribution they are scored under: their
    # percentiles spread over the whole range, not piled at the bottom as out-of-domain molecules'.
    assert 25 < scored["density_percentile"].median() < 75


def test_generate_dist_moses_proposes_drug_like_molecules(tmp_path):
    output = tmp_path / "generated.csv"
    result = runner.invoke(app, ["generate", "--dist", "moses", "-n", "16", "--seed", "1", "--no-filter",
                                 "-o", str(output)])
    assert result.exit_code == 0, result.output
    generated = pd.read_csv(output)
    assert len(generated) == 16 and generated["unique"].all()
    molecules = [Chem.MolFromSmiles(text) for text in generated["smiles"]]
    assert all(mol is not None for mol in molecules)
    assert {atom.GetSymbol() for mol in molecules for atom in mol.GetAtoms()} <= MOSES_ELEMENTS
    # MOSES's sizes (9-27 heavy atoms, median 23), beyond QM9's 9.
    assert generated["heavy_atoms"].median() >= 15
    assert (generated["log_density"] <= 0).all()


def test_score_under_the_default_model_points_drug_like_rows_to_dist_moses(tmp_path):
    source = tmp_path / "screen.csv"
    pd.read_csv(shared_file("moses/test.csv.gz"), nrows=20).to_csv(source, index=False)
    result = runner.invoke(app, ["score", str(source), "-o", str(tmp_path / "scored.csv")])
    assert result.exit_code == 0, result.output
    assert (pd.read_csv(tmp_path / "scored.csv")["status"] == "out_of_domain").all()
    assert "add --dist moses" in " ".join(result.output.split())

import math
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import pytest

from molgen.checks import (
    CheckConfig,
    CheckSpecError,
    Window,
    check_frame,
    check_smiles,
    compute_properties,
    run_checks,
)
from molgen.chemistry import parse_smiles

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
IBUPROFEN = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"
RHODANINE = "O=C1NC(=S)SC1=Cc1ccccc1"  # a textbook PAINS hit (ene_rhod_A)


def test_properties_of_aspirin():
    props = compute_properties(parse_smiles(ASPIRIN))
    assert props["mw"] == pytest.approx(180.159, abs=1e-3)
    assert props["tpsa"] == pytest.approx(63.6, abs=0.01)
    assert (props["hbd"], props["hba"], props["rings"], props["heavy_atoms"]) == (1, 3, 1, 13)
    assert 0 < props["qed"] < 1 and 1 <= props["sa_score"] <= 10


def test_window_parsing_and_errors():
    assert Window.parse(" QED >= 0.5") == Window("qed", ">=", 0.5)
    assert Window.parse("logp<3") == Window("clogp", "<", 3.0)
    assert str(Window.parse("mw=300")) == "mw==300"
    with pytest.raises(CheckSpecError, match="unknown property 'potency'; valid properties: mw, clogp"):
        Window.parse("potency>=5")
    with pytest.raises(CheckSpecError, match="operators: >=, <=, ==, !=, >, <"):
        Window.parse("qed=>0.5")
    with pytest.raises(CheckSpecError, match="valid rules: lipinski, veber"):
        CheckConfig(rules=("lipinksi",))
    with pytest.raises(CheckSpecError, match="valid sets: pains, brenk"):
        CheckConfig.from_strings(alerts=["pains,bogus"])


def test_verdicts_rules_alerts_and_windows():
    config = CheckConfig.from_strings(["lipinski,veber"], ["pains", "brenk"], ["qed>=0.5"])
    big = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC(=O)O"  # MW > 500, logP > 5, 38 rotatable bonds
    ibuprofen, aspirin, rhodanine, lipid, bad = check_smiles([IBUPROFEN, ASPIRIN, RHODANINE, big, "C1CC"], config)
    assert ibuprofen["passed_checks"] and ibuprofen["failed_checks"] == ""
    assert aspirin["failed_checks"] == "brenk:phenol_ester"
    assert not rhodanine["passed_checks"]
    assert "pains:ene_rhod_A(235)" in rhodanine["failed_checks"].split(";")
    assert rhodanine["alerts_brenk"] != ""
    assert lipid["passes_lipinski"] is False and lipid["passes_veber"] is False
    assert "lipinski" in lipid["failed_checks"] and "qed>=0.5" in lipid["failed_checks"]
    assert bad["status"] == "invalid_smiles" and "SMILES syntax error" in bad["reason"]
    assert math.isnan(bad["mw"]) and bad["passed_checks"] is False


def test_check_frame_keeps_columns_rows_and_index():
    frame = pd.DataFrame({"smiles": [ASPIRIN, None, "not a smiles"], "status": ["a", "b", "c"]}, index=[10, 11, 12])
    out = check_frame(frame, "smiles")
    assert out.index.tolist() == [10, 11, 12]
    assert out["status"].tolist() == ["a", "b", "c"]  # the user's column is untouched
    assert out["status_molgen"].tolist() == ["ok", "invalid_smiles", "invalid_smiles"]
    assert out.loc[11, "reason"] == "empty SMILES"


def test_worker_processes_give_the_same_results():
    smiles = [ASPIRIN, RHODANINE, "CCO", "bad("] * 300
    config = CheckConfig()
    serial = run_checks(smiles, config)
    with ProcessPoolExecutor(2) as pool:
        parallel = run_checks(smiles, config, pool=pool)
    pd.testing.assert_frame_equal(serial, parallel)

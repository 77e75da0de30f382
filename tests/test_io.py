import gzip

import pandas as pd
import pytest
from rdkit import Chem

from molgen.io import InputError, TableWriter, read_molecules


def read_all(path, **kwargs):
    chunks = list(read_molecules(path, **kwargs))
    frame = pd.concat([c.frame for c in chunks])
    smiles = [s for c in chunks for s in c.smiles]
    errors = [e for c in chunks for e in c.read_error]
    return chunks, frame, smiles, errors


def test_csv_chunks_keep_every_row_and_column_in_order(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(
        b'id,SMILES,note\n1,CCO,"quoted, with comma"\n2,,empty smiles\n\n4,c1ccccc1,"multi\nline"\n'
        b"5,C\xff\xfeC,bad bytes\n"
    )
    chunks, frame, smiles, _ = read_all(path, chunk_size=2)
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert frame.index.tolist() == [0, 1, 2, 3, 4]
    assert frame["id"].tolist() == ["1", "2", "", "4", "5"]  # the blank line is a row, not lost
    assert frame["note"].tolist()[0] == "quoted, with comma"
    assert smiles[:4] == ["CCO", None, None, "c1ccccc1"]
    assert smiles[4] == "C\udcff\udcfeC"  # undecodable bytes kept as surrogate escapes: the parser reports them
    assert frame["SMILES"].tolist()[4] == "C\\xff\\xfeC"  # and the echoed column shows them as text


def test_missing_smiles_column_names_the_columns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,structure\n1,CCO\n")
    with pytest.raises(InputError, match="columns are: id, structure"):
        list(read_molecules(path, smiles_column="smiles"))
    with pytest.raises(InputError, match="no SMILES column found"):
        list(read_molecules(path))
    assert read_all(path, smiles_column="structure")[2] == ["CCO"]


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_molecules(tmp_path / "nope.csv")
    odd = tmp_path / "in.xlsx"
    odd.write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        read_molecules(odd)


def test_smi_gzip_with_names_and_blank_lines(tmp_path):
    path = tmp_path / "in.smi.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("CCO ethanol\n\nc1ccccc1 benzene ring\nC\n")
    _, frame, smiles, _ = read_all(path)
    assert smiles == ["CCO", None, "c1ccccc1", "C"]
    assert frame["name"].tolist() == ["ethanol", "", "benzene ring", ""]


def test_sdf_keeps_properties_and_reports_bad_records(tmp_path):
    path = tmp_path / "in.sdf"
    writer = Chem.SDWriter(str(path))
    for smiles, name in [("CCO", "ethanol"), ("c1ccccc1", "benzene")]:
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("_Name", name)
        mol.SetProp("activity", "1.5")
        writer.write(mol)
    writer.close()
    text = path.read_text()
    # A third record with a pentavalent carbon: RDKit rejects it on sanitization.
    bad = Chem.MolToMolBlock(Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False))
    path.write_text(text + "bad\n" + bad.split("\n", 1)[1] + "$$$$\n")
    _, frame, smiles, errors = read_all(path)
    assert frame["name"].tolist() == ["ethanol", "benzene", "bad"]
    assert frame["activity"].tolist()[:2] == ["1.5", "1.5"]
    assert smiles[:2] == ["CCO", "c1ccccc1"] and smiles[2] is None
    assert errors[0] is None and "SDF record 3 rejected by RDKit" in errors[2]


def test_parquet_in_and_out(tmp_path):
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"smiles": ["CCO", "", "C"], "value": [1.0, 2.0, 3.0]})
    writer = TableWriter(tmp_path / "out.parquet")
    writer.write(frame.iloc[:2])
    writer.write(frame.iloc[2:])
    writer.close()
    _, back, smiles, _ = read_all(tmp_path / "out.parquet", chunk_size=2)
    assert back["value"].tolist() == [1.0, 2.0, 3.0]
    assert smiles == ["CCO", None, "C"]


def test_writer_is_atomic(tmp_path):
    target = tmp_path / "out.csv.gz"
    writer = TableWriter(target)
    writer.write(pd.DataFrame({"a": [1]}))
    assert not target.exists()  # only the .partial file exists until close
    writer.close()
    assert pd.read_csv(target)["a"].tolist() == [1]
    aborted = TableWriter(tmp_path / "aborted.csv")
    aborted.write(pd.DataFrame({"a": [1]}))
    aborted.abort()
    assert list(tmp_path.glob("aborted*")) == []
    with pytest.raises(InputError, match="cannot write"):
        TableWriter(tmp_path / "out.xlsx")


def test_a_line_with_the_wrong_number_of_fields_is_kept_with_a_reason(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,smiles\n1,CCO\n2,CC,extra\n3\n4,C#N\n")
    _, frame, smiles, errors = read_all(path)
    assert frame["id"].tolist() == ["1", "2", "3", "4"]
    assert smiles == ["CCO", None, None, "C#N"]
    assert errors == [None, "line has 3 fields, the header has 2", "line has 1 fields, the header has 2", None]

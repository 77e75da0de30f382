"""Fuzzing the readers behind score, filter and check: random bytes, mixed encodings, huge lines and
SMILES-like strings. Every input row comes out exactly once, in order, with a status, and no row that
is not one whole valid SMILES is ``ok``."""

import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdkit import Chem

from molgen.checkpoint import load_model
from molgen.checks import CheckConfig
from molgen.scoring import Scorer
from molgen.screen import FilterSpec, check_file, screen_file

STATUSES = {"ok", "invalid_smiles", "invalid_molecule", "out_of_domain"}
VALID = ["CCO", "OC1CC1", "C#N", "NCC(=O)O", "C[N+](=O)[O-]", "c1ccoc1", "CC(C)(C)O", "FC(F)F"]
SMILES_ALPHABET = "CNOFcnos()[]=#+-@/\\.%0123456789H "

# A line never holds a line break (the oracle counts lines); anything else goes.
line_bytes = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    st.text(SMILES_ALPHABET, max_size=30).map(str.encode),
    st.sampled_from(VALID).map(str.encode),
    st.tuples(st.sampled_from(VALID), st.sampled_from([" junk", "\tC", "\x00", "\xa0", "é", "  "]))
    .map(lambda pair: "".join(pair).encode()),
    st.sampled_from(VALID).map(lambda s: s.encode("utf-16")),  # another encoding
    st.sampled_from(VALID).map(lambda s: ("é" + s).encode("latin-1")),  # and another
    st.sampled_from([b"A" * 200_000, b"C" * 400]),  # past the csv module's field limit; too many atoms
)


def whole_valid_smiles(cell: bytes) -> bool:
    """The oracle, written apart from molgen's parser: strict UTF-8, printable ASCII without blanks
    once the surrounding blanks are gone, and RDKit accepts it."""
    try:
        text = cell.strip(b" \t").decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not text or not text.isascii() or not text.isprintable() or " " in text:
        return False
    return Chem.MolFromSmiles(text) is not None


def csv_cell(cell: bytes) -> bytes:
    return b'"' + cell.replace(b'"', b'""') + b'"' if re.search(rb'[",]', cell) else cell


@pytest.fixture(scope="module")
def scorer():
    return Scorer(load_model())


def check_rows(out, cells: list[bytes]) -> pd.DataFrame:
    raw = out.read_bytes()
    raw.decode("utf-8")  # outputs hold only valid text
    assert b"\x00" not in raw
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(rows) == len(cells)
    assert set(rows["status"]) <= STATUSES
    for cell, status in zip(cells, rows["status"]):
        if status == "ok":
            assert whole_valid_smiles(cell), cell[:80]
    return rows


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@FUZZ
@given(lines=st.lists(line_bytes, min_size=0, max_size=25), bom=st.booleans())
def test_csv_every_row_once_and_ok_only_when_whole(lines, bom, scorer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    source = folder / "in.csv"
    source.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"smiles\n" + b"".join(csv_cell(c) + b"\n" for c in lines))
    rows = check_rows(_score(source, folder / "scored.csv", scorer), lines)
    expected_ok = [whole_valid_smiles(c) and rows.at[i, "status"] != "out_of_domain" for i, c in enumerate(lines)]
    assert (rows["status"] == "ok").tolist() == expected_ok  # nothing valid is lost either
    check_rows(_filter(source, folder / "filtered.csv", scorer), lines)
    check_rows(_check(source, folder / "checked.csv"), lines)


@FUZZ
@given(lines=st.lists(line_bytes, min_size=0, max_size=25), names=st.booleans())
def test_smi_every_line_once_and_ok_only_when_whole(lines, names, scorer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smi")
    source = folder / "in.smi"
    written = [line + (b" name%d" % i if names else b"") for i, line in enumerate(lines)]
    source.write_bytes(b"".join(line + b"\n" for line in written))
    # The .smi convention: the SMILES is the line's first blank-separated field, the rest a name.
    smiles_fields = [re.split(rb"[ \t]+", line.strip(b" \t"), maxsplit=1)[0] for line in written]
    for out in (_score(source, folder / "scored.csv", scorer), _filter(source, folder / "filtered.csv", scorer),
                _check(source, folder / "checked.csv")):
        check_rows(out, smiles_fields)


def _score(source, out, scorer):
    screen_file(source, out, scorer, chunk_size=7)
    return out


def _filter(source, out, scorer):
    screen_file(source, out, scorer, chunk_size=7, keep_failed=True,
                filter_spec=FilterSpec(0.0, CheckConfig(rules=("lipinski",), alerts=("pains",))))
    return out


def _check(source, out):
    check_file(source, out, CheckConfig(), chunk_size=7)
    return out

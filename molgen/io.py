"""Streaming molecule files in and out: CSV/TSV, SMILES (.smi), SDF and Parquet, gzip transparently.

Readers yield :class:`Chunk` objects of at most ``chunk_size`` rows, so memory stays flat whatever
the file size. Every row of the input appears in exactly one chunk, in file order: rows that cannot
be read as a molecule keep their place with ``smiles`` None and a ``read_error``, so nothing is lost.
An input without rows yields one empty chunk that still carries the columns, so its output has a header.

Text is decoded as UTF-8 (a leading byte-order mark dropped) with undecodable bytes kept as
surrogate escapes: the SMILES parser then reports such a cell, and the echoed input columns show
each bad byte and control character as a ``\\xNN`` escape, so outputs hold only valid text.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
from rdkit import Chem

from molgen.chemistry import SURROUNDING_BLANKS, parse_smiles

DEFAULT_CHUNK_SIZE = 10_000
SMILES_FORMATS = {".smi", ".smiles", ".ism", ".can"}
SDF_FORMATS = {".sdf", ".sd", ".mol"}
PARQUET_FORMATS = {".parquet", ".pq"}
TABLE_FORMATS = {".csv": ",", ".tsv": "\t", ".txt": ","}
READABLE_FORMATS = sorted(set(TABLE_FORMATS) | SMILES_FORMATS | SDF_FORMATS | PARQUET_FORMATS)
# Control characters (tab, newline and carriage return are text) and undecodable bytes.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\udc80-\udcff]")
# A huge cell is a row to report, not a reason to stop: the csv module's default limit is 128 KiB.
csv.field_size_limit(2**31 - 1)


class InputError(ValueError):
    """The input as a whole cannot be read (missing column, unknown format): a usage error."""


@dataclass
class Chunk:
    """``frame`` holds the input columns as text; ``frame.index`` is the 0-based row number."""

    frame: pd.DataFrame
    smiles: list[str | None]
    read_error: list[str | None]  # why a row could not be read as a molecule (SDF records)
    smiles_column: str = "smiles"  # the column of ``frame`` the SMILES came from

    def __len__(self) -> int:
        return len(self.frame)


def file_format(path: str | os.PathLike) -> str:
    """Suffix that decides the format, ignoring a trailing ``.gz``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in READABLE_FORMATS:
        raise InputError(
            f"cannot tell the format of {Path(path).name!r}: use one of {', '.join(READABLE_FORMATS)}"
            " (optionally .gz)"
        )
    return suffix


def read_molecules(
    path: str | os.PathLike, smiles_column: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
    start: int = 0, stop: int | None = None,
) -> Iterator[Chunk]:
    """Stream ``path`` in chunks; ``smiles_column`` defaults to a column named smiles (any case).

    ``start`` and ``stop`` read only the rows ``start <= row < stop`` (a shard of the file; the index
    keeps the row numbers of the whole file). A range without rows yields one empty chunk."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"input {str(path)!r} is a directory: give one molecule file")
    if not path.is_file():
        raise InputError(f"input file {str(path)!r} does not exist")
    suffix = file_format(path)
    if suffix in TABLE_FORMATS:
        return _read_table(path, TABLE_FORMATS[suffix], smiles_column, chunk_size, _Rows(start, stop))
    if suffix in SMILES_FORMATS:
        return _read_smi(path, chunk_size, _Rows(start, stop))
    if suffix in SDF_FORMATS:
        return _read_sdf(path, chunk_size, _Rows(start, stop))
    return _read_parquet(path, smiles_column, chunk_size, _Rows(start, stop))


def count_rows(path: str | os.PathLike, smiles_column: str | None = None) -> int:
    """The number of rows :func:`read_molecules` yields for ``path`` (header excluded), without
    building them: what a planner needs to cut a file into shards."""
    read_molecules(path, smiles_column, 1)  # the same checks: format, header, SMILES column
    path = Path(path)
    suffix = file_format(path)
    if suffix in PARQUET_FORMATS:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suffix in SDF_FORMATS:
        raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
        with raw:
            return sum(1 for _ in Chem.ForwardSDMolSupplier(raw, sanitize=False, removeHs=False))
    with _open_text(path) as handle:
        if suffix in SMILES_FORMATS:
            return sum(1 for _ in handle)
        return sum(1 for _ in csv.reader(handle, delimiter=TABLE_FORMATS[suffix])) - 1


@dataclass
class _Rows:
    """The row range a reader yields, and the position of its next chunk."""

    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            raise ValueError(f"bad row range {self.start}..{self.stop}")
        self.next_chunk = self.start

    def before(self, row: int) -> bool:
        return row < self.start

    def after(self, row: int) -> bool:
        return self.stop is not None and row >= self.stop

    def take(self, count: int) -> int:
        """The index of a chunk of ``count`` rows about to be yielded."""
        first, self.next_chunk = self.next_chunk, self.next_chunk + count
        return first

    @property
    def nothing_yielded(self) -> bool:
        return self.next_chunk == self.start


def resolve_smiles_column(columns: list[str], requested: str | None) -> str:
    if requested is not None:
        if requested in columns:
            return requested
        raise InputError(f"no column {requested!r} in the input; columns are: {', '.join(map(str, columns))}")
    matches = [c for c in columns if str(c).strip().lower() == "smiles"]
    if matches:
        return matches[0]
    raise InputError(
        f"no SMILES column found; pass --smiles-column, one of: {', '.join(map(str, columns))}"
    )


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    # Undecodable bytes become surrogate escapes so the row survives and is reported, not the file lost;
    # utf-8-sig drops the byte-order mark that Excel writes before the header.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def as_text(value: str) -> str:
    """``value`` with each undecodable byte and control character written as a ``\\xNN`` escape."""
    return _NOT_TEXT.sub(_escape, value) if _NOT_TEXT.search(value) else value


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00 if code >= 0xDC00 else code:02x}"


def _read_table(path: Path, sep: str, smiles_column: str | None, chunk_size: int, span: _Rows) -> Iterator[Chunk]:
    with _open_text(path) as handle:
        header = next(csv.reader(handle, delimiter=sep), None)
    if not header or not any(name.strip() for name in header):
        raise InputError(f"{path.name} is empty: a {path.suffix.lstrip('.').upper()} file needs a header line"
                         " naming its columns")
    column = resolve_smiles_column(header, smiles_column)  # fail before any work
    return _table_chunks(path, sep, [as_text(name) for name in header], header.index(column), chunk_size, span)


def _table_chunks(path: Path, sep: str, header: list[str], position: int, chunk_size: int,
                  span: _Rows) -> Iterator[Chunk]:
    """Rows in order, quoted fields (separators, newlines) honoured; a blank line is a row of empty
    fields, and a line with the wrong number of fields is kept with a read error naming the count,
    so a malformed line never stops a run."""
    width = len(header)
    rows: list[list[str]] = []
    errors: list[str | None] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter=sep)
        next(reader, None)  # the header
        for row, line_fields in enumerate(reader):
            if span.before(row):
                continue
            if span.after(row):
                break
            error = None
            if line_fields and len(line_fields) != width:
                error = f"line has {len(line_fields)} fields, the header has {width}"
            rows.append((line_fields + [""] * width)[:width])
            errors.append(error)
            if len(rows) == chunk_size:
                yield _table_chunk(rows, errors, header, position, span.take(len(rows)))
                rows, errors = [], []
    if rows or span.nothing_yielded:
        yield _table_chunk(rows, errors, header, position, span.take(len(rows)))


def _table_chunk(rows: list[list[str]], errors: list, header: list[str], position: int, start: int) -> Chunk:
    smiles = [None if error else (row[position] or None) for row, error in zip(rows, errors)]
    text_rows = [[as_text(field) for field in row] if _NOT_TEXT.search(",".join(row)) else row for row in rows]
    frame = pd.DataFrame(text_rows, columns=header, index=pd.RangeIndex(start, start + len(rows)))
    return Chunk(frame, smiles, errors, header[position])


def _read_smi(path: Path, chunk_size: int, span: _Rows) -> Iterator[Chunk]:
    """One molecule per line: SMILES, then optionally spaces or tabs and a name (the .smi convention);
    a line is split at its first blank only, so a SMILES with other characters fails as a whole."""
    rows: list[tuple[str, str]] = []
    with _open_text(path) as handle:
        for row, line in enumerate(handle):
            if span.before(row):
                continue
            if span.after(row):
                break
            parts = _SMI_SEPARATOR.split(line.strip(SURROUNDING_BLANKS), maxsplit=1)
            rows.append((parts[0], parts[1] if len(parts) > 1 else ""))
            if len(rows) == chunk_size:
                yield _smi_chunk(rows, span.take(len(rows)))
                rows = []
    if rows or span.nothing_yielded:
        yield _smi_chunk(rows, span.take(len(rows)))


_SMI_SEPARATOR = re.compile("[ \t]+")


def _smi_chunk(rows: list[tuple[str, str]], start: int) -> Chunk:
    text_rows = [(as_text(s), as_text(name)) for s, name in rows]
    frame = pd.DataFrame(text_rows, columns=["smiles", "name"], index=pd.RangeIndex(start, start + len(rows)))
    return Chunk(frame, [s or None for s, _ in rows], [None] * len(rows))


def _read_sdf(path: Path, chunk_size: int, span: _Rows) -> Iterator[Chunk]:
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    with raw:
        supplier = Chem.ForwardSDMolSupplier(raw, sanitize=False, removeHs=False)
        records: list[dict] = []
        smiles: list[str | None] = []
        errors: list[str | None] = []
        for number, mol in enumerate(supplier):
            if span.before(number):
                continue
            if span.after(number):
                break
            record, text, error = _sdf_record(mol, number)
            records.append(record)
            smiles.append(text)
            errors.append(error)
            if len(records) == chunk_size:
                yield _sdf_chunk(records, smiles, errors, span.take(len(records)))
                records, smiles, errors = [], [], []
        if records or span.nothing_yielded:
            yield _sdf_chunk(records, smiles, errors, span.take(len(records)))


def _sdf_record(mol: Chem.Mol | None, number: int) -> tuple[dict, str | None, str | None]:
    if mol is None:
        return {"name": ""}, None, f"SDF record {number + 1} could not be read"
    record = {"name": mol.GetProp("_Name") if mol.HasProp("_Name") else ""}
    record.update({k: str(v) for k, v in mol.GetPropsAsDict(includePrivate=False).items()})
    try:
        Chem.SanitizeMol(mol)
        mol = Chem.RemoveHs(mol)
    except Exception as error:  # RDKit raises several unrelated exception types here
        return record, None, f"SDF record {number + 1} rejected by RDKit: {str(error).strip()}"
    return record, Chem.MolToSmiles(mol), None


def _sdf_chunk(records: list[dict], smiles: list, errors: list, start: int) -> Chunk:
    frame = pd.DataFrame.from_records(records, columns=None if records else ["name"],
                                      index=pd.RangeIndex(start, start + len(records)))
    frame.insert(0, "smiles", [s or "" for s in smiles])
    return Chunk(frame.astype(str).map(lambda v: as_text(v) if isinstance(v, str) else v), smiles, errors)


def _read_parquet(path: Path, smiles_column: str | None, chunk_size: int, span: _Rows) -> Iterator[Chunk]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise InputError("reading Parquet needs pyarrow: pip install 'molgen[parquet]'") from error
    parquet = pq.ParquetFile(path)
    column = resolve_smiles_column(parquet.schema_arrow.names, smiles_column)
    first = 0  # the file row of the batch's first row
    for batch in parquet.iter_batches(batch_size=chunk_size):
        if span.after(first):
            break
        rows = batch.slice(max(span.start - first, 0))
        if span.stop is not None:
            rows = rows.slice(0, max(span.stop - max(first, span.start), 0))
        first += batch.num_rows
        if rows.num_rows:
            yield _parquet_chunk(rows.to_pandas(), column, span.take(rows.num_rows))
    if span.nothing_yielded:
        yield _parquet_chunk(parquet.schema_arrow.empty_table().to_pandas(), column, span.take(0))


def chunk_of_frame(frame: pd.DataFrame, smiles_column: str | None = None) -> Chunk:
    """A frame already in memory (a batch of a Ray dataset, a notebook's table) as a :class:`Chunk`,
    read as a Parquet batch is: a missing or empty SMILES cell is a row without a molecule."""
    column = resolve_smiles_column([str(c) for c in frame.columns], smiles_column)
    return _parquet_chunk(frame.copy(), column, 0)


def _parquet_chunk(frame: pd.DataFrame, column: str, start: int) -> Chunk:
    frame.index = pd.RangeIndex(start, start + len(frame))
    smiles = [s if isinstance(s, str) and s else None for s in frame[column].tolist()]
    for name in frame.select_dtypes(include=["object", "string"]).columns:  # UTF-8, but may hold controls
        frame[name] = [as_text(v) if isinstance(v, str) else v for v in frame[name]]
    return Chunk(frame, smiles, [None] * len(frame), column)


class TableWriter:
    """Appends DataFrame chunks to a CSV/TSV (optionally .gz) or Parquet file.

    Output goes to ``<path>.partial`` and is renamed on :meth:`close`, so a file at ``path`` is
    always complete; :meth:`abort` removes the partial file. CSV/TSV chunks are written whole and
    flushed to disk, each gzip chunk as its own gzip member, and a small ``.progress`` record after
    each one says how many rows and bytes are safely written: with ``resume`` a later run truncates
    the partial file to that point and continues: ``source_rows_done`` tells how many input rows the
    written part covers (a filter writes fewer rows than it reads).
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, smiles_column: str | None = None):
        self.path = Path(path)
        suffixes = [s.lower() for s in self.path.suffixes]
        self._gzip = bool(suffixes) and suffixes[-1] == ".gz"
        core = suffixes[-2] if self._gzip and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
        if core not in {".csv", ".tsv", ".sdf", ".parquet", ".pq"}:
            raise InputError(
                f"cannot write {self.path.name!r}: use .csv, .tsv, .sdf (optionally .gz) or .parquet"
                " (a .smi file has no room for the appended columns)"
            )
        self._format = core
        self.smiles_column = smiles_column  # needed for SDF output: the molecule of each record
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._progress = self.path.with_name(self.path.name + ".progress")
        self._handle = None
        self._parquet = None
        self.rows_written = 0
        self.source_rows_done = 0
        self.resumed_state: dict = {}  # what the interrupted run passed as ``state`` with its last chunk
        self._header_written = False
        if resume:
            if self._format in {".parquet", ".pq"}:
                raise InputError("--resume needs a CSV or TSV output; a Parquet file cannot be continued")
            if self._progress.is_file() and self._partial.is_file():
                state = json.loads(self._progress.read_text())
                with open(self._partial, "r+b") as handle:
                    handle.truncate(state["bytes"])  # drop a chunk that was being written when stopped
                self.rows_written = int(state["rows"])
                self.source_rows_done = int(state["source_rows"])
                self._header_written = state["bytes"] > 0
                self.resumed_state = state.get("state", {})
        else:
            self._progress.unlink(missing_ok=True)
            self._partial.unlink(missing_ok=True)

    def write(self, frame: pd.DataFrame, source_rows_done: int | None = None, state: dict | None = None) -> None:
        """Append ``frame``; ``source_rows_done``: input rows covered so far (default: rows written);
        ``state``: plain values a resumed run gets back as ``resumed_state`` (e.g. its counts)."""
        self.source_rows_done = source_rows_done if source_rows_done is not None else self.rows_written + len(frame)
        if self._format in {".parquet", ".pq"}:
            self._write_parquet(frame)
            self.rows_written += len(frame)
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self._partial, "ab")
        if self._format == ".sdf":
            data = _sdf_block(frame, self.smiles_column or "smiles").encode("utf-8")
        else:
            sep = "\t" if self._format == ".tsv" else ","
            data = frame.to_csv(sep=sep, index=False, header=not self._header_written).encode("utf-8")
        self._header_written = True
        self._handle.write(gzip.compress(data) if self._gzip else data)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.rows_written += len(frame)
        progress = {"rows": self.rows_written, "bytes": self._handle.tell(), "source_rows": self.source_rows_done,
                    "state": state or {}}
        tmp = self._progress.with_name(self._progress.name + ".tmp")
        tmp.write_text(json.dumps(progress))
        os.replace(tmp, self._progress)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._parquet = pq.ParquetWriter(self._partial, table.schema)
        else:
            table = pa.Table.from_pandas(frame, schema=self._parquet.schema, preserve_index=False)
        self._parquet.write_table(table)

    def _close_handles(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._parquet is not None:
            self._parquet.close()

    def close(self) -> None:
        if self._handle is None and self._parquet is None and not self._partial.exists():
            self.write(pd.DataFrame())  # an empty input still gives an (empty) output file
        self._close_handles()
        os.replace(self._partial, self.path)
        self._progress.unlink(missing_ok=True)

    def abort(self) -> None:
        self._close_handles()
        self._partial.unlink(missing_ok=True)
        self._progress.unlink(missing_ok=True)


def _sdf_block(frame: pd.DataFrame, smiles_column: str) -> str:
    """SDF records for a chunk, every column as a data item; a row without a valid molecule is kept
    as an empty record (its properties say why), so the record count equals the row count."""
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    for row in frame.itertuples(index=False):
        values = dict(zip(frame.columns, row))
        mol = parse_smiles(values.get(smiles_column)) or Chem.Mol()
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and value != value):
                mol.SetProp(str(key), str(value))
        writer.write(mol)
    writer.close()
    return buffer.getvalue()

"""Streaming ``score`` and ``filter`` over molecule files of any size.

Chunks are read one at a time; RDKit parsing and encoding of the next chunks run in worker
processes while the model scores the current one, and at most ``workers + 1`` chunks are in flight,
so memory stays flat whatever the file size. Output rows keep the input's columns and order; each
chunk is written whole, so an interrupted run can be resumed without duplicating or losing rows.
"""

from __future__ import annotations

from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from molgen.checks import CheckConfig, append_results, run_checks
from molgen.io import Chunk, TableWriter, read_molecules
from molgen.scoring import DEFAULT_MIN_PERCENTILE, EncodedChunk, Scorer, encode_smiles, passes_density
from molgen.workers import process_pool

FILTER_COLUMNS = ["passed", "failed_checks"]


class StrictFailure(Exception):
    """``--strict`` met a row that is not ``ok``."""


@dataclass
class FilterSpec:
    """What ``filter`` requires of a row besides being representable: density and RDKit checks."""

    min_percentile: float = DEFAULT_MIN_PERCENTILE
    checks: CheckConfig = field(default_factory=lambda: CheckConfig(rules=(), alerts=()))


@dataclass
class ScreenSummary:
    """Counts over the whole input; after ``--resume`` they include the rows written before it."""

    rows: int = 0
    written: int = 0
    skipped_on_resume: int = 0  # rows done by the interrupted run
    statuses: Counter = field(default_factory=Counter)
    removed_by: Counter = field(default_factory=Counter)  # criterion -> rows it failed
    passed: int = 0

    def to_dict(self) -> dict:
        return {"rows": self.rows, "written": self.written, "statuses": dict(self.statuses),
                "removed_by": dict(self.removed_by), "passed": self.passed}

    @classmethod
    def resumed(cls, state: dict, skipped: int) -> "ScreenSummary":
        """The summary an interrupted run saved beside its output, continued."""
        return cls(rows=state.get("rows", skipped), written=state.get("written", 0), skipped_on_resume=skipped,
                   statuses=Counter(state.get("statuses", {})), removed_by=Counter(state.get("removed_by", {})),
                   passed=state.get("passed", 0))


def _skip_rows(chunks: Iterator[Chunk], skip: int) -> Iterator[Chunk]:
    """Chunks with the first ``skip`` input rows removed (rows already written before a resume)."""
    for chunk in chunks:
        if len(chunk) and chunk.frame.index[-1] < skip:
            continue
        if len(chunk) and chunk.frame.index[0] < skip:
            keep = chunk.frame.index >= skip
            offset = int((~keep).sum())
            chunk = Chunk(chunk.frame[keep], chunk.smiles[offset:], chunk.read_error[offset:], chunk.smiles_column)
        yield chunk


def _encoded_chunks(chunks: Iterator[Chunk], vocab_dict: dict, pool: ProcessPoolExecutor | None,
                    ahead: int) -> Iterator[tuple[Chunk, EncodedChunk]]:
    """(chunk, encoded) in order; with a pool, up to ``ahead`` chunks are encoded in the background."""
    if pool is None:
        for chunk in chunks:
            yield chunk, encode_smiles(chunk.smiles, chunk.read_error, vocab_dict)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.submit(encode_smiles, chunk.smiles, chunk.read_error, vocab_dict)))
        if len(pending) > ahead:
            done_chunk, future = pending.popleft()
            yield done_chunk, future.result()
    while pending:
        done_chunk, future = pending.popleft()
        yield done_chunk, future.result()


def filter_columns(scores: pd.DataFrame, checks: pd.DataFrame | None, spec: FilterSpec) -> pd.DataFrame:
    """``passed`` and ``failed_checks`` per row: status, density percentile, then the RDKit checks."""
    failed: list[list[str]] = []
    for row, (status, percentile) in enumerate(zip(scores["status"], scores["density_percentile"])):
        reasons = []
        if status != "ok":
            reasons.append(status)
        elif not passes_density(percentile, spec.min_percentile):
            reasons.append(f"density<p{spec.min_percentile:g}")
        if checks is not None and checks["status"].iat[row] == "ok" and checks["failed_checks"].iat[row]:
            reasons.extend(checks["failed_checks"].iat[row].split(";"))
        failed.append(reasons)
    return pd.DataFrame(
        {"passed": [not r for r in failed], "failed_checks": [";".join(r) for r in failed]}, index=scores.index
    )


def screened_rows(chunk: Chunk, scores: pd.DataFrame, filter_spec: FilterSpec | None, keep_failed: bool,
                  summary: ScreenSummary, pool: ProcessPoolExecutor | None = None) -> pd.DataFrame:
    """One chunk's output: its columns and scores, and under a filter the checks' properties and the
    verdict, less the failing rows unless ``keep_failed``; the filter's counts go to ``summary``."""
    output = append_results(chunk.frame, scores)
    if filter_spec is None:
        return output
    checks = None
    if filter_spec.checks.rules or filter_spec.checks.alerts or filter_spec.checks.windows:
        # The checks parse each SMILES again. Doing them in the encoding worker instead,
        # one parse per row, was measured slower (QM9, 2 cores: 927 against 1,155 rows/s):
        # there they compete with inference; here both workers take them while it waits.
        checks = run_checks(chunk.smiles, filter_spec.checks, chunk.read_error, pool, chunk.frame.index)
    verdict = filter_columns(scores, checks, filter_spec)
    if checks is not None:
        properties = checks.drop(columns=["status", "reason", "passed_checks", "failed_checks"])
        output = append_results(output, properties)
    output = append_results(output, verdict)
    for text in verdict["failed_checks"]:
        summary.removed_by.update({item.split(":")[0] for item in text.split(";") if item})
    summary.passed += int(verdict["passed"].sum())
    return output if keep_failed else output[verdict["passed"].to_numpy()]


def screen_file(
    input_path: str | Path,
    output_path: str | Path,
    scorer: Scorer,
    smiles_column: str | None = None,
    chunk_size: int = 10_000,
    workers: int = 1,
    strict: bool = False,
    resume: bool = False,
    filter_spec: FilterSpec | None = None,
    keep_failed: bool = False,
    on_chunk: Callable[[ScreenSummary], None] | None = None,
) -> ScreenSummary:
    """Score (and with ``filter_spec`` filter) ``input_path`` into ``output_path``; see the module doc.

    ``score`` writes every row; ``filter`` writes the passing rows, or every row with ``passed`` and
    ``failed_checks`` when ``keep_failed``.
    """
    writer = TableWriter(output_path, resume=resume)
    summary = ScreenSummary.resumed(writer.resumed_state, writer.source_rows_done)
    chunks = _skip_rows(read_molecules(input_path, smiles_column, chunk_size), writer.source_rows_done)
    screen_chunks(chunks, writer, scorer, summary, workers, strict, filter_spec, keep_failed, on_chunk)
    return summary


def screen_chunks(
    chunks: Iterator[Chunk],
    writer: TableWriter,
    scorer: Scorer,
    summary: ScreenSummary,
    workers: int = 1,
    strict: bool = False,
    filter_spec: FilterSpec | None = None,
    keep_failed: bool = False,
    on_chunk: Callable[[ScreenSummary], None] | None = None,
    row_id_offset: int | None = None,
) -> None:
    """The run of :func:`screen_file` over any chunks (a whole file, or one shard of it), counted into
    ``summary`` and closed into ``writer``'s file; with ``row_id_offset`` each output row starts with
    ``row_id`` = offset + its row number in the chunk's file (a sharded run's rows are put back in order by it)."""
    vocab_dict = scorer.loaded.vocab.to_dict()
    pool = process_pool(workers) if workers > 1 else None
    try:
        for chunk, encoded in _encoded_chunks(chunks, vocab_dict, pool, ahead=workers):
            scores = scorer.score_encoded(encoded, chunk.frame.index, chunk_seed=int(chunk.frame.index[0]) if len(chunk) else 0)
            if strict and (scores["status"] != "ok").any():
                row = int(scores.index[(scores["status"] != "ok").to_numpy().argmax()])
                raise StrictFailure(f"row {row + 1}: {scores.at[row, 'status']}: {scores.at[row, 'reason']} (--strict)")
            output = screened_rows(chunk, scores, filter_spec, keep_failed, summary, pool)
            if row_id_offset is not None:
                output = output.copy()
                output.insert(0, "row_id_molgen" if "row_id" in output.columns else "row_id",
                              row_id_offset + output.index.to_numpy())
            summary.rows += len(chunk)
            summary.written += len(output)
            summary.statuses.update(scores["status"].tolist())
            writer.smiles_column = chunk.smiles_column
            writer.write(output, source_rows_done=summary.rows, state=summary.to_dict())
            if on_chunk:
                on_chunk(summary)
        writer.close()
    except BaseException:
        if strict:
            writer.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def check_file(
    input_path: str | Path,
    output_path: str | Path,
    config: CheckConfig,
    smiles_column: str | None = None,
    chunk_size: int = 10_000,
    workers: int = 1,
    strict: bool = False,
    on_chunk: Callable[[ScreenSummary], None] | None = None,
) -> ScreenSummary:
    """RDKit checks on every row of ``input_path``, the input columns kept and the results appended;
    the output file appears only when the run completes."""
    writer = TableWriter(output_path)
    summary = ScreenSummary()
    pool = process_pool(workers) if workers > 1 else None
    try:
        for chunk in read_molecules(input_path, smiles_column, chunk_size):
            results = run_checks(chunk.smiles, config, chunk.read_error, pool, chunk.frame.index)
            bad = results["status"] != "ok"
            if strict and bad.any():
                row = int(results.index[bad.to_numpy().argmax()])
                raise StrictFailure(f"row {row + 1}: {results.at[row, 'status']}: {results.at[row, 'reason']} (--strict)")
            writer.smiles_column = chunk.smiles_column
            writer.write(append_results(chunk.frame, results))
            summary.rows += len(chunk)
            summary.written += len(chunk)
            summary.statuses.update(results["status"].tolist())
            summary.passed += int(results["passed_checks"].sum())
            for text in results.loc[~bad, "failed_checks"]:
                summary.removed_by.update({item.split(":")[0] for item in text.split(";") if item})
            if on_chunk:
                on_chunk(summary)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return summary

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

from molgen.checks import CheckConfig, append_results, check_parsed, checks_frame
from molgen.chemistry import parse_smiles_with_reason
from molgen.io import Chunk, TableWriter, read_molecules
from molgen.scoring import DEFAULT_MIN_PERCENTILE, EncodedChunk, Scorer, encode_smiles

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
    rows: int = 0
    written: int = 0
    skipped_on_resume: int = 0
    statuses: Counter = field(default_factory=Counter)
    removed_by: Counter = field(default_factory=Counter)  # criterion -> rows it failed
    passed: int = 0


def _skip_rows(chunks: Iterator[Chunk], skip: int) -> Iterator[Chunk]:
    """Chunks with the first ``skip`` input rows removed (rows already written before a resume)."""
    for chunk in chunks:
        if len(chunk) == 0 or chunk.frame.index[-1] < skip:
            continue
        if chunk.frame.index[0] < skip:
            keep = chunk.frame.index >= skip
            offset = int((~keep).sum())
            chunk = Chunk(chunk.frame[keep], chunk.smiles[offset:], chunk.read_error[offset:], chunk.smiles_column)
        yield chunk


def prepare_chunk(
    smiles: list[str | None], read_errors: list[str | None], vocab_dict: dict, checks: CheckConfig | None
) -> tuple[EncodedChunk, list[dict] | None]:
    """Parse each row once, then encode it for the model and, when ``checks`` is given, check it
    with RDKit (result rows for the rows without a read error); runs in a worker process."""
    parsed = [(None, error) if error else parse_smiles_with_reason(text) for text, error in zip(smiles, read_errors)]
    encoded = encode_smiles(smiles, read_errors, vocab_dict, parsed)
    if checks is None:
        return encoded, None
    return encoded, check_parsed([pair for pair, error in zip(parsed, read_errors) if not error], checks)


def _prepared_chunks(chunks: Iterator[Chunk], vocab_dict: dict, checks: CheckConfig | None,
                     pool: ProcessPoolExecutor | None, ahead: int) -> Iterator[tuple[Chunk, tuple]]:
    """(chunk, :func:`prepare_chunk` result) in order; with a pool, up to ``ahead`` chunks are
    prepared in the background."""
    if pool is None:
        for chunk in chunks:
            yield chunk, prepare_chunk(chunk.smiles, chunk.read_error, vocab_dict, checks)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.submit(prepare_chunk, chunk.smiles, chunk.read_error, vocab_dict, checks)))
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
        elif not percentile >= spec.min_percentile:  # NaN (no calibration) fails too: be explicit
            reasons.append(f"density<p{spec.min_percentile:g}")
        if checks is not None and checks["status"].iat[row] == "ok" and checks["failed_checks"].iat[row]:
            reasons.extend(checks["failed_checks"].iat[row].split(";"))
        failed.append(reasons)
    return pd.DataFrame(
        {"passed": [not r for r in failed], "failed_checks": [";".join(r) for r in failed]}, index=scores.index
    )


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
    summary = ScreenSummary(skipped_on_resume=writer.source_rows_done)
    chunks = _skip_rows(read_molecules(input_path, smiles_column, chunk_size), writer.source_rows_done)
    vocab_dict = scorer.loaded.vocab.to_dict()
    check_config = None
    if filter_spec is not None and (filter_spec.checks.rules or filter_spec.checks.alerts or filter_spec.checks.windows):
        check_config = filter_spec.checks
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for chunk, (encoded, check_rows) in _prepared_chunks(chunks, vocab_dict, check_config, pool, ahead=workers):
            scores = scorer.score_encoded(encoded, chunk.frame.index, chunk_seed=int(chunk.frame.index[0]))
            if strict and (scores["status"] != "ok").any():
                row = int(scores.index[(scores["status"] != "ok").to_numpy().argmax()])
                raise StrictFailure(f"row {row + 1}: {scores.at[row, 'status']}: {scores.at[row, 'reason']} (--strict)")
            output = append_results(chunk.frame, scores)
            if filter_spec is not None:
                checks = None
                if check_rows is not None:
                    checks = checks_frame(check_rows, chunk.read_error, check_config, chunk.frame.index)
                verdict = filter_columns(scores, checks, filter_spec)
                if checks is not None:
                    properties = checks.drop(columns=["status", "reason", "passed_checks", "failed_checks"])
                    output = append_results(output, properties)
                output = append_results(output, verdict)
                for text in verdict["failed_checks"]:
                    summary.removed_by.update({item.split(":")[0] for item in text.split(";") if item})
                summary.passed += int(verdict["passed"].sum())
                if not keep_failed:
                    output = output[verdict["passed"].to_numpy()]
            writer.smiles_column = chunk.smiles_column
            writer.write(output, source_rows_done=int(chunk.frame.index[-1]) + 1)
            summary.rows += len(chunk)
            summary.written += len(output)
            summary.statuses.update(scores["status"].tolist())
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
    return summary

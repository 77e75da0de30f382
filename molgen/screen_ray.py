"""The Ray engine of ``score`` and ``filter``: shards of the input scored by a pool of actors with Ray Data.

The driver cuts the input (one file, a folder or a glob of files) into shards of whole chunks and
saves that plan in the output folder. A Ray Data pipeline hands the shards to an actor pool
(``map_batches`` over a callable class, so each actor loads the model once); an actor reads its shard
with molgen's own readers (so columns, statuses and reasons are the local engine's), scores it into a
file of its own, renames that onto the shard's part when complete, then writes a small record of
its counts. A part's name is fixed by the plan, so a shard that runs twice (Ray restarts a killed
actor and retries its task) replaces its own part whole: no row is lost or written twice.
``resume`` keeps every part whose record exists. The manifest, written last, lists the parts and
checks that their rows add up to the input's. Every output row starts with ``row_id``: its row
number over the input files in the plan's order, by which the rows can be put back in input order.

A ``ray.data.Dataset`` is screened as it flows instead (:func:`screen_dataset`): the same columns are
appended batch by batch, and reading, ordering and writing stay the caller's.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from molgen.io import READABLE_FORMATS, InputError, TableWriter, chunk_of_frame, count_rows, file_format, read_molecules
from molgen.scoring import encode_smiles
from molgen.screen import FilterSpec, ScreenSummary, StrictFailure, screen_chunks, screened_rows

PLAN = "_plan.json"
MANIFEST = "_manifest.json"
RECORDS = "_shards"  # one record per finished part; the leading underscore hides these from Parquet readers
PART_FORMATS = {"parquet": ".parquet", "csv": ".csv", "csv.gz": ".csv.gz", "tsv": ".tsv"}
INSTALL_HINT = "the Ray engine needs Ray Data: pip install 'molgen[ray]'"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra, not only ray core)
    except ImportError as error:
        raise InputError(INSTALL_HINT) from error
    return ray


@dataclass(frozen=True)
class Shard:
    number: int
    path: str
    start: int  # rows start <= row < stop of the file
    stop: int
    row_id_offset: int  # the row_id of the file's first row

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class RaySummary(ScreenSummary):
    """A :class:`ScreenSummary` over every shard, plus the shard counts."""

    shards: int = 0
    shards_skipped_on_resume: int = 0


@dataclass
class ScreenOptions:
    """What every actor needs, as plain values (they travel to the cluster)."""

    checkpoint: str | None = None
    distribution: str | None = None
    versus: str | None = None
    smiles_column: str | None = None
    filter_spec: FilterSpec | None = None
    keep_failed: bool = False
    exact: bool = False
    strict: bool = False
    batch_size: int = 2048
    chunk_size: int = 10_000
    device: str = "cpu"
    threads: int = 1
    part_format: str = "parquet"
    fingerprint: dict = field(default_factory=dict)


def input_files(source: str | os.PathLike | list) -> list[Path]:
    """The molecule files of ``source``: a file, a folder (its readable files, sorted), a glob, or a
    list of these."""
    if isinstance(source, (list, tuple)):
        return [path for item in source for path in input_files(item)]
    text = str(source)
    if any(char in text for char in "*?["):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not paths:
            raise InputError(f"no file matches {text!r}")
        return paths
    path = Path(text)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and _readable(p))
        if not paths:
            raise InputError(f"folder {text!r} holds no molecule file ({', '.join(READABLE_FORMATS)}, optionally .gz)")
        return paths
    if not path.is_file():
        raise InputError(f"input file {text!r} does not exist")
    return [path]


def _readable(path: Path) -> bool:
    try:
        file_format(path)
    except InputError:
        return False
    return not path.name.startswith((".", "_"))


def plan_shards(files: list[Path], rows_per_file: list[int], shard_rows: int) -> list[Shard]:
    """Shards of at most ``shard_rows`` rows that never cross a file; an empty file is one empty shard
    (its part still carries the header)."""
    shards: list[Shard] = []
    offset = 0
    for path, rows in zip(files, rows_per_file):
        for start in range(0, max(rows, 1), shard_rows):
            shards.append(Shard(len(shards), str(path.resolve()), start, min(start + shard_rows, rows), offset))
        offset += rows
    return shards


def part_name(shard_number: int, part_format: str) -> str:
    return f"part-{shard_number:05d}{PART_FORMATS[part_format]}"


def _scorer(options: ScreenOptions):
    """The model, loaded once per actor, with the threads the actor was given."""
    from molgen.checkpoint import load_model
    from molgen.scoring import Scorer
    from molgen.workers import set_threads

    set_threads(options.threads)
    return Scorer(load_model(options.checkpoint, device=options.device), options.distribution, options.device,
                  options.batch_size, options.exact, versus=options.versus)


class ShardScreener:
    """The actor of the pool over files: reads, scores and writes one shard per call."""

    def __init__(self, output: str, options: ScreenOptions):
        self.output = Path(output)
        self.options = options
        self.scorer = _scorer(options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        records = [self.screen(Shard(**{key: _plain(batch[key][i]) for key in batch}))
                   for i in range(len(batch["number"]))]
        return {"record": [json.dumps(record) for record in records]}

    def screen(self, shard: Shard) -> dict:
        started = time.perf_counter()
        options = self.options
        summary = ScreenSummary()
        part = self.output / part_name(shard.number, options.part_format)
        # Each attempt writes its own hidden file, renamed onto the part when complete: an attempt still
        # running (an earlier run's actor, a retry's predecessor) never writes into this one's file.
        attempt = self.output / f".{part.name.split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:8]}{PART_FORMATS[options.part_format]}"
        writer = TableWriter(attempt)
        chunks = read_molecules(shard.path, options.smiles_column, options.chunk_size, shard.start, shard.stop)
        try:
            screen_chunks(chunks, writer, self.scorer, summary, strict=options.strict,
                          filter_spec=options.filter_spec, keep_failed=options.keep_failed,
                          row_id_offset=shard.row_id_offset)
        except StrictFailure as error:  # the driver stops the run with it
            return {"number": shard.number, "strict_failure": f"{Path(shard.path).name}: {error}"}
        os.replace(attempt, part)
        record = {"number": shard.number, "seconds": time.perf_counter() - started, "pid": os.getpid(),
                  "peak_rss_mib": _peak_rss_mib(), **summary.to_dict()}
        _write_json(self.output / RECORDS / f"{shard.number:05d}.json", record)
        return record


class BatchScreener:
    """The actor of the pool over a ``ray.data.Dataset``: a pandas batch in, the same rows with the
    results appended out (under a filter, the failing rows dropped unless ``keep_failed``)."""

    def __init__(self, options: ScreenOptions):
        self.options = options
        self.scorer = _scorer(options)
        self.vocab_dict = self.scorer.loaded.vocab.to_dict()

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        chunk = chunk_of_frame(frame.reset_index(drop=True), self.options.smiles_column)
        encoded = encode_smiles(chunk.smiles, chunk.read_error, self.vocab_dict)
        scores = self.scorer.score_encoded(encoded, chunk.frame.index)
        return screened_rows(chunk, scores, self.options.filter_spec, self.options.keep_failed, ScreenSummary())


def _peak_rss_mib() -> float:
    """This actor's largest resident memory so far (what a cluster's memory per actor must allow)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def connect(address: str | None = None, quiet: bool = False):
    """Ray, initialized: a local instance when ``address`` is None, "auto" for the cluster this machine
    belongs to; an instance the caller started is used as it is. ``quiet`` leaves Ray's own progress
    lines and bars out (the CLI has its own)."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING if quiet else logging.INFO)
    if quiet:
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def _pool(actors: int, cpus_per_actor: float, gpus_per_actor: float) -> dict:
    import ray.data

    return dict(compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)


def screen_dataset(dataset, options: ScreenOptions, actors: int = 1, cpus_per_actor: float = 1,
                   gpus_per_actor: float = 0):
    """``dataset`` with the results appended to each row (filtered rows dropped unless ``keep_failed``),
    lazily: Ray runs it when the caller consumes or writes it."""
    require_ray()
    return dataset.map_batches(BatchScreener, fn_constructor_kwargs={"options": options}, batch_format="pandas",
                               batch_size=options.chunk_size, **_pool(actors, cpus_per_actor, gpus_per_actor))


def screen_files(
    source: str | os.PathLike | list,
    output: str | os.PathLike,
    options: ScreenOptions,
    actors: int = 1,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
    shard_rows: int = 100_000,
    resume: bool = False,
    address: str | None = None,
    on_shard: Callable[[RaySummary], None] | None = None,
) -> RaySummary:
    """Score (with ``options.filter_spec``: filter) ``source`` into the folder ``output``; see the module doc."""
    if options.part_format not in PART_FORMATS:
        raise InputError(f"unknown part format {options.part_format!r}: use one of {', '.join(PART_FORMATS)}")
    files = input_files(source)
    for path in files:
        read_molecules(path, options.smiles_column, 1)  # a missing column fails here, before any work
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"output {str(output)!r} is a file: the Ray engine writes a folder of parts")
    shard_rows = max(options.chunk_size, -(-shard_rows // options.chunk_size) * options.chunk_size)  # whole chunks
    ray = connect(address)
    inputs = [{"path": str(p.resolve()), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files]
    plan = _resumed_plan(output, inputs, options, shard_rows) if resume else None
    if plan is None:
        _clear(output)
        count = ray.remote(count_rows)
        rows_per_file = ray.get([count.remote(str(p), options.smiles_column) for p in files])
        shards = plan_shards(files, rows_per_file, shard_rows)
        plan = {"inputs": [dict(item, rows=rows) for item, rows in zip(inputs, rows_per_file)],
                "options": _plan_options(options, shard_rows), "shards": [asdict(s) for s in shards]}
        _write_json(output / PLAN, plan)
    shards = [Shard(**s) for s in plan["shards"]]
    done = _records(output, shards, options.part_format)
    summary = RaySummary(shards=len(shards), shards_skipped_on_resume=len(done))
    for record in done.values():
        _add(summary, record)
    summary.skipped_on_resume = summary.rows
    todo = [asdict(s) for s in shards if s.number not in done]
    if todo:
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo))
        screened = dataset.map_batches(ShardScreener, fn_constructor_kwargs={"output": str(output), "options": options},
                                       batch_size=1, **_pool(actors, cpus_per_actor, gpus_per_actor))
        for row in screened.iter_rows():
            record = json.loads(row["record"])
            if "strict_failure" in record:
                raise StrictFailure(record["strict_failure"])
            done[record["number"]] = record
            _add(summary, record)
            if on_shard:
                on_shard(summary)
    _write_manifest(output, plan, shards, done, options.part_format)
    return summary


def _plan_options(options: ScreenOptions, shard_rows: int) -> dict:
    """What must not change between a run and its ``resume``."""
    spec = options.filter_spec
    return {"fingerprint": options.fingerprint, "distribution": options.distribution,
            **({"versus": options.versus} if options.versus else {}),  # as before --versus existed: runs resume
            "smiles_column": options.smiles_column, "exact": options.exact, "keep_failed": options.keep_failed,
            "filter": None if spec is None else repr(spec), "chunk_size": options.chunk_size,
            "shard_rows": shard_rows, "part_format": options.part_format}


def _resumed_plan(output: Path, inputs: list[dict], options: ScreenOptions, shard_rows: int) -> dict | None:
    path = output / PLAN
    if not path.is_file():
        return None  # nothing was started: a fresh run
    plan = json.loads(path.read_text())
    if [{k: v for k, v in item.items() if k != "rows"} for item in plan["inputs"]] != inputs:
        raise InputError(f"{output} holds a run over other input files (or they changed since): "
                         "drop --resume to start over")
    if plan["options"] != _plan_options(options, shard_rows):
        raise InputError(f"{output} holds a run with other options or another model: use the same ones with --resume")
    return plan


def _clear(output: Path) -> None:
    """Remove what an earlier run wrote here (parts, records, plan, manifest), nothing else."""
    if not output.is_dir():
        return
    for path in output.iterdir():
        if path.name.startswith(("part-", ".part-")) or path.name in {PLAN, MANIFEST}:
            path.unlink()
    if (output / RECORDS).is_dir():
        for path in (output / RECORDS).iterdir():
            path.unlink()


def _records(output: Path, shards: list[Shard], part_format: str) -> dict[int, dict]:
    """The finished shards: a record and its part, both present."""
    done = {}
    for shard in shards:
        record = output / RECORDS / f"{shard.number:05d}.json"
        if record.is_file() and (output / part_name(shard.number, part_format)).is_file():
            done[shard.number] = json.loads(record.read_text())
    return done


def _add(summary: RaySummary, record: dict) -> None:
    summary.rows += record["rows"]
    summary.written += record["written"]
    summary.passed += record["passed"]
    summary.statuses.update(record["statuses"])
    summary.removed_by.update(record["removed_by"])


def _write_manifest(output: Path, plan: dict, shards: list[Shard], done: dict[int, dict], part_format: str) -> None:
    """Every part with its rows; refuses to finish when a shard's rows differ from the plan's."""
    wrong = [f"shard {s.number} ({Path(s.path).name} rows {s.start}..{s.stop}): {done[s.number]['rows']} rows"
             for s in shards if done[s.number]["rows"] != s.rows]
    if wrong:
        raise RuntimeError("rows read differ from the plan (did an input change during the run?): " + "; ".join(wrong))
    parts = [{"part": part_name(s.number, part_format), "input": s.path, "rows": [s.start, s.stop],
              "row_ids": [s.row_id_offset + s.start, s.row_id_offset + s.stop],
              **{key: done[s.number].get(key) for key in ("written", "passed", "statuses", "removed_by", "seconds",
                                                          "pid", "peak_rss_mib")}}
             for s in shards]
    for leftover in output.glob(".part-*"):  # attempts that died before their rename
        leftover.unlink(missing_ok=True)
    total = sum(item["rows"] for item in plan["inputs"])
    _write_json(output / MANIFEST, {"inputs": plan["inputs"], "rows": total,
                                    "written": sum(p["written"] for p in parts), "parts": parts})


def read_output(output: str | os.PathLike) -> pd.DataFrame:
    """A finished run's parts as one frame in input order (by ``row_id``): for checks and small outputs."""
    output = Path(output)
    manifest = json.loads((output / MANIFEST).read_text())
    frames = []
    for part in manifest["parts"]:
        path = output / part["part"]
        frames.append(pd.read_parquet(path) if path.suffix == ".parquet" else
                      pd.read_csv(path, sep="\t" if ".tsv" in path.name else ",", dtype=str, keep_default_na=False))
    frame = pd.concat(frames, ignore_index=True)
    row_id = "row_id_molgen" if "row_id_molgen" in frame.columns else "row_id"
    frame[row_id] = frame[row_id].astype("int64")
    return frame.sort_values(row_id, kind="stable").reset_index(drop=True)



def screen_ray(
    source,
    output: str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    distribution: str | None = None,
    versus: str | None = None,
    smiles_column: str | None = None,
    filter_spec: FilterSpec | None = None,
    keep_failed: bool = False,
    exact: bool = False,
    strict: bool = False,
    actors: int = 1,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
    batch_size: int = 2048,
    chunk_size: int = 10_000,
    shard_rows: int = 100_000,
    part_format: str = "parquet",
    resume: bool = False,
    address: str | None = None,
    on_shard: Callable[[RaySummary], None] | None = None,
):
    """Score (with ``filter_spec``: filter) molecules on a Ray cluster; see the module doc.

    ``source`` is a file, a folder, a glob or a list of them (then ``output`` is the folder of parts and
    a :class:`RaySummary` comes back), or a ``ray.data.Dataset`` (then the screened dataset comes back,
    lazily, for the caller to consume or write). ``address``: None starts a local Ray instance, "auto"
    joins this machine's cluster, "ray://host:10001" a remote one. Each actor takes ``cpus_per_actor``
    CPUs (its torch threads) and ``gpus_per_actor`` GPUs (the model then runs on CUDA).
    """
    from molgen.checkpoint import load_model
    from molgen.scoring import Scorer

    loaded = load_model(checkpoint)  # a bad checkpoint or distribution fails here, not in every actor
    Scorer(loaded, distribution, versus=versus)
    options = ScreenOptions(
        checkpoint=None if checkpoint is None else str(Path(checkpoint).resolve()), distribution=distribution,
        versus=versus,
        smiles_column=smiles_column, filter_spec=filter_spec, keep_failed=keep_failed, exact=exact, strict=strict,
        batch_size=batch_size, chunk_size=chunk_size, device="cuda" if gpus_per_actor else "cpu",
        threads=max(1, int(cpus_per_actor)), part_format=part_format,
        fingerprint={"model": loaded.digest or (str(checkpoint) if checkpoint else "bundled")})
    ray = require_ray()
    if isinstance(source, ray.data.Dataset):
        if output is not None:
            raise InputError("a Dataset comes back screened: write it with its own write_parquet/write_csv")
        return screen_dataset(source, options, actors, cpus_per_actor, gpus_per_actor)
    if output is None:
        raise InputError("give the output folder for the parts")
    return screen_files(source, output, options, actors, cpus_per_actor, gpus_per_actor, shard_rows, resume,
                        address, on_shard)

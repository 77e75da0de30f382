"""Python API for notebooks: ``model = molgen.load(); model.generate(1000, seed=0)``."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from molgen.checkpoint import BUNDLED, BUNDLED_NAME, LoadedModel, ModelCard, load_model
from molgen.checks import DEFAULT_ALERTS, DEFAULT_RULES, CheckConfig, append_results, run_checks
from molgen.guidance import parse_targets
from molgen.pipeline import DEFAULT_GUIDANCE_SCALE, GenerateOptions, generate
from molgen.sampler import SamplerSettings
from molgen.io import resolve_smiles_column
from molgen.scoring import (DEFAULT_MIN_PERCENTILE, EXACT_COLUMNS, RATIO_COLUMNS, SCORE_COLUMNS, Scorer,
                             encode_graphs)
from molgen.screen import FILTER_COLUMNS, FilterSpec, filter_columns

if TYPE_CHECKING:
    from torch_geometric.data import Data


def _is_pyg_graph(value) -> bool:
    # A torch-geometric graph exists only once torch-geometric is imported: checking that first keeps its
    # import (seconds) out of every SMILES-only call.
    if "torch_geometric" not in sys.modules:
        return False
    from torch_geometric.data import Data

    return isinstance(value, Data)


class Model:
    """A loaded DiScoFormer with the pipeline around it."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu", name: str = BUNDLED.name):
        self.loaded = loaded
        self.name = name
        self.device = device
        self.last_stats: dict = {}

    @property
    def vocab(self):
        return self.loaded.vocab

    @property
    def card(self) -> ModelCard:
        """What ``molgen info`` prints: training facts, validation metrics, benchmark figures
        (``dataclasses.asdict`` gives plain values)."""
        return ModelCard.of(self.loaded, self.name)

    def generate(
        self,
        n: int = 1000,
        seed: int = 0,
        steps: int = 100,
        corrector_steps: int = 0,
        snr: float = 0.1,
        mala: bool = False,
        temperature: float = 1.0,
        min_percentile: float | None = None,
        match_profile: bool = True,
        apply_filters: bool = True,
        props: tuple[str, ...] = (),
        targets: tuple[str, ...] = (),
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        rules: tuple[str, ...] = DEFAULT_RULES,
        alerts: tuple[str, ...] = DEFAULT_ALERTS,
        batch_size: int = 500,
        distribution: str | None = None,
        num_atoms: int | None = None,
    ) -> pd.DataFrame:
        """Sample ``n`` molecules; the same columns as ``molgen generate`` (ranked best first). ``targets``
        (e.g. ``("qed>=0.6", "clogp=1..3")``) guide the sampler towards property windows with weight
        ``guidance_scale`` and add the ``on_target`` column."""
        options = GenerateOptions(
            n=n, seed=seed, batch_size=batch_size, device=self.device,
            sampler=SamplerSettings(steps=steps, corrector_steps=corrector_steps, snr=snr, mala=mala,
                                    temperature=temperature),
            distribution=distribution, num_atoms=num_atoms, match_profile=match_profile,
            apply_filters=apply_filters, checks=CheckConfig.from_strings(rules, alerts, props),
            targets=parse_targets(targets), guidance_scale=guidance_scale,
        )
        if min_percentile is not None:
            options = replace(options, min_percentile=min_percentile)
        frame, self.last_stats = generate(self.loaded, options)
        return frame

    def score(
        self, molecules: "pd.DataFrame | list[str] | str | list[Data]", smiles_column: str | None = None,
        exact: bool = False, distribution: str | None = None, versus: str | None = None,
    ) -> pd.DataFrame:
        """Score SMILES (a string, a list, or a DataFrame column): the DataFrame comes back with
        ``log_density``, ``density_percentile``, ``status`` and ``reason`` appended (and the ELBO and
        its standard error with ``exact``; ``log_ratio``, log_density minus that under the distribution
        ``versus`` names, e.g. "null", with ``versus``); a list gives a DataFrame with a ``smiles`` column.
        ``smiles_column`` defaults to a column named smiles in any case, as on the command line; a
        frame molgen scored before gets its score columns replaced, not repeated. A list of
        torch-geometric graphs in this model's vocabulary (:meth:`to_pyg`) gives one row per graph."""
        if isinstance(molecules, (list, tuple)) and molecules and _is_pyg_graph(molecules[0]):
            scorer = Scorer(self.loaded, distribution, self.device, exact=exact, versus=versus)
            encoded = encode_graphs(list(molecules), self.loaded.vocab)
            return scorer.score_encoded(encoded, pd.RangeIndex(len(molecules)))
        frame, column = _as_frame(molecules, smiles_column)
        frame = _without_earlier_results(frame, SCORE_COLUMNS + RATIO_COLUMNS + EXACT_COLUMNS)
        smiles = [s if isinstance(s, str) and s else None for s in frame[column].tolist()]
        scores = Scorer(self.loaded, distribution, self.device, exact=exact, versus=versus).score_smiles(
            smiles, frame.index)
        return append_results(frame, scores)

    def to_pyg(self, smiles: "str | list[str]") -> list[Data]:
        """Each SMILES as a torch-geometric ``Data`` in this model's vocabulary: ``x`` atom-type ids,
        ``edge_index`` and ``edge_attr`` bond-type ids (both directions), plus ``smiles``, ``status`` and
        ``reason``. Rows that cannot be encoded have no atoms and say why; :attr:`vocab` labels the ids."""
        from molgen.pyg import smiles_to_data

        return smiles_to_data([smiles] if isinstance(smiles, str) else list(smiles), self.loaded.vocab.to_dict())

    def __repr__(self) -> str:
        meta = self.loaded.meta
        return (f"molgen.Model({meta.get('parameters', '?'):,} parameters, distributions "
                f"{self.loaded.distributions}, trained {meta.get('training_seconds', 0) / 60:.0f} min)")


def _as_frame(molecules, smiles_column: str | None) -> tuple[pd.DataFrame, str]:
    """The molecules as a DataFrame and its SMILES column, found as the CLI finds it."""
    if isinstance(molecules, str):
        molecules = [molecules]
    if isinstance(molecules, pd.DataFrame):
        return molecules, resolve_smiles_column(list(molecules.columns), smiles_column)
    column = smiles_column or "smiles"
    return pd.DataFrame({column: list(molecules)}), column


def _without_earlier_results(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` less the result ``columns`` when molgen scored it before (it has every score column):
    scoring again replaces them. A user's own column of one of these names is kept and the new one
    suffixed, as :func:`append_results` does."""
    if not set(SCORE_COLUMNS) <= set(frame.columns):
        return frame
    return frame.drop(columns=[c for c in columns if c in frame.columns])


def filter_frame(
    molecules: "pd.DataFrame | list[str]",
    model: Model | None = None,
    smiles_column: str | None = None,
    min_percentile: float = DEFAULT_MIN_PERCENTILE,
    rules: tuple[str, ...] = (),
    alerts: tuple[str, ...] = (),
    props: tuple[str, ...] = (),
    keep_failed: bool = True,
    distribution: str | None = None,
) -> pd.DataFrame:
    """Density filter plus RDKit checks on a DataFrame: ``passed`` and ``failed_checks`` appended
    (only the passing rows when ``keep_failed`` is False). ``model`` defaults to the bundled one;
    ``distribution`` to its first."""
    model = model or load()
    spec = FilterSpec(min_percentile, CheckConfig.from_strings(rules, alerts, props))
    frame, column = _as_frame(molecules, smiles_column)
    produced = [c for c in spec.checks.result_columns if c not in ("status", "reason")] + FILTER_COLUMNS
    scored = model.score(_without_earlier_results(frame, produced), column, distribution=distribution)
    checks = None
    if rules or alerts or props:
        smiles = [s if isinstance(s, str) and s else None for s in scored[column].tolist()]
        checks = run_checks(smiles, spec.checks, index=scored.index)
        scored = append_results(scored, checks.drop(columns=["status", "reason", "passed_checks", "failed_checks"]))
    verdict = filter_columns(scored, checks, spec)
    result = append_results(scored, verdict)
    return result if keep_failed else result[verdict["passed"].to_numpy()]


def load(path: str | os.PathLike | None = None, device: str = "cpu", base: str | os.PathLike | None = None) -> Model:
    """The bundled pretrained QM9 model, or the checkpoint at ``path`` (an adapter file loads on its
    base: the bundled model or the path it was adapted from, or ``base``)."""
    return Model(load_model(path, device=device, base=base), device=device,
                 name=BUNDLED.name if path is None else str(path))


class Adapted(NamedTuple):
    model: Model  # the base with the new distribution
    train: list[str]  # canonical SMILES the adapters were trained on
    held_out: list[str]  # and those held out for the figures and the calibration


def adapt(
    molecules: str | os.PathLike, output: str | os.PathLike, base: str | os.PathLike | None = None,
    name: str | None = None, smiles_column: str | None = None, minutes: float = 10.0, max_steps: int | None = None,
    rank: int = 8, val_fraction: float = 0.2, seed: int = 0,
) -> Adapted:
    """``molgen adapt`` from Python: the molecule file becomes distribution ``name`` (default: the
    output file's stem) of ``base`` (default: the bundled model), written to ``output``."""
    from molgen.training.adapt import AdaptConfig, adapt_file

    output = Path(output)
    loaded = load_model(base)
    base_name = BUNDLED_NAME if base is None or Path(base).resolve() == BUNDLED else str(base)
    config = AdaptConfig(name=name or output.stem, rank=rank, minutes=minutes, max_steps=max_steps,
                         val_fraction=val_fraction, seed=seed)
    _, split = adapt_file(molecules, output, loaded, base_name, config, smiles_column)
    return Adapted(load(output, base=base), split["train"], split["held_out"])

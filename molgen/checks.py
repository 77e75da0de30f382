"""RDKit checks: properties, rule sets, structural alerts and user windows such as ``qed>=0.5``.

:func:`check_smiles` is the per-molecule kernel (it runs in worker processes for large inputs);
:func:`check_frame` appends its results to a DataFrame, keeping every input column and row.
"""

from __future__ import annotations

import math
import operator
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import pandas as pd
from rdkit import Chem
from rdkit.Chem import QED, Crippen, Descriptors, rdMolDescriptors
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams
from rdkit.Contrib.SA_Score import sascorer

from molgen.chemistry import parse_smiles_with_reason

PROPERTIES: dict[str, Callable[[Chem.Mol], float]] = {
    "mw": Descriptors.MolWt,
    "clogp": Crippen.MolLogP,
    "tpsa": rdMolDescriptors.CalcTPSA,
    "hbd": rdMolDescriptors.CalcNumHBD,
    "hba": rdMolDescriptors.CalcNumHBA,
    "rotatable_bonds": rdMolDescriptors.CalcNumRotatableBonds,
    "rings": rdMolDescriptors.CalcNumRings,
    "heavy_atoms": lambda mol: mol.GetNumHeavyAtoms(),
    "net_charge": Chem.GetFormalCharge,
    "qed": QED.qed,
    "sa_score": sascorer.calculateScore,
}
PROPERTY_ALIASES = {
    "logp": "clogp",
    "molwt": "mw",
    "mol_weight": "mw",
    "rotb": "rotatable_bonds",
    "rotatable": "rotatable_bonds",
    "ring_count": "rings",
    "charge": "net_charge",
    "sa": "sa_score",
    "sascore": "sa_score",
    "hac": "heavy_atoms",
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
# Below this many molecules, shipping work to another process costs more than it saves.
MIN_ROWS_PER_TASK = 500
ALERT_CATALOGS = {
    "pains": FilterCatalogParams.FilterCatalogs.PAINS,
    "brenk": FilterCatalogParams.FilterCatalogs.BRENK,
    "nih": FilterCatalogParams.FilterCatalogs.NIH,
    "zinc": FilterCatalogParams.FilterCatalogs.ZINC,
}


class CheckSpecError(ValueError):
    """A rule, alert set or window the user asked for does not exist or does not parse."""


def canonical_property(name: str) -> str:
    key = name.strip().lower()
    key = PROPERTY_ALIASES.get(key, key)
    if key not in PROPERTIES:
        raise CheckSpecError(
            f"unknown property {name!r}; valid properties: {', '.join(PROPERTIES)}"
            f" (aliases: {', '.join(f'{a}={p}' for a, p in PROPERTY_ALIASES.items())})"
        )
    return key


@dataclass(frozen=True)
class Window:
    """A bound on one property, e.g. ``qed >= 0.5``."""

    prop: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Window":
        match = re.fullmatch(r"\s*([A-Za-z_]+)\s*(>=|<=|==|!=|>|<|=)\s*([-+0-9.eE]+)\s*", text)
        if match is None:
            raise CheckSpecError(
                f"cannot parse window {text!r}: expected PROPERTY OPERATOR NUMBER, e.g. 'qed>=0.5'; "
                f"operators: {', '.join(OPERATORS)}"
            )
        name, op, number = match.groups()
        prop = canonical_property(name)
        try:
            value = float(number)
        except ValueError:
            raise CheckSpecError(f"{number!r} in window {text!r} is not a number") from None
        return cls(prop, "==" if op == "=" else op, value)

    def holds(self, properties: dict[str, float]) -> bool:
        return OPERATORS[self.op](properties[self.prop], self.value)

    def __str__(self) -> str:
        return f"{self.prop}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Rule:
    """A named rule set; a molecule passes with at most ``max_violations`` failed windows."""

    name: str
    windows: tuple[Window, ...]
    max_violations: int = 0
    reference: str = ""

    def violations(self, properties: dict[str, float]) -> list[Window]:
        return [w for w in self.windows if not w.holds(properties)]


def _rule(name: str, windows: str, max_violations: int = 0, reference: str = "") -> Rule:
    return Rule(name, tuple(Window.parse(w) for w in windows.split()), max_violations, reference)


RULES = {
    rule.name: rule
    for rule in (
        _rule("lipinski", "mw<=500 clogp<=5 hbd<=5 hba<=10", 1, "Lipinski et al. 1997, one violation allowed"),
        _rule("veber", "rotatable_bonds<=10 tpsa<=140", 0, "Veber et al. 2002"),
        _rule("ghose", "mw>=160 mw<=480 clogp>=-0.4 clogp<=5.6 heavy_atoms>=20 heavy_atoms<=70", 0,
              "Ghose et al. 1999 (atom count as heavy atoms)"),
        _rule("ro3", "mw<=300 clogp<=3 hbd<=3 hba<=3 rotatable_bonds<=3", 0, "Congreve et al. 2003, fragments"),
    )
}


# What generate and check apply unless told otherwise (filter applies none: it keeps what it is given).
DEFAULT_RULES = ("lipinski", "veber")
DEFAULT_ALERTS = ("pains", "brenk")


@dataclass(frozen=True)
class CheckConfig:
    rules: tuple[str, ...] = DEFAULT_RULES
    alerts: tuple[str, ...] = DEFAULT_ALERTS
    windows: tuple[Window, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for rule in self.rules:
            if rule not in RULES:
                raise CheckSpecError(f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}")
        for alert in self.alerts:
            if alert not in ALERT_CATALOGS:
                raise CheckSpecError(f"unknown alert set {alert!r}; valid sets: {', '.join(ALERT_CATALOGS)}")

    @classmethod
    def from_strings(
        cls, rules: Sequence[str] = DEFAULT_RULES, alerts: Sequence[str] = DEFAULT_ALERTS,
        windows: Sequence[str] = (),
    ) -> "CheckConfig":
        """Build from CLI-style strings; comma-separated lists are accepted anywhere."""
        return cls(
            rules=tuple(_split_names(rules)),
            alerts=tuple(_split_names(alerts)),
            windows=tuple(Window.parse(w) for w in windows),
        )

    @property
    def result_columns(self) -> list[str]:
        return (
            ["status", "reason"]
            + list(PROPERTIES)
            + [f"passes_{rule}" for rule in self.rules]
            + [f"alerts_{name}" for name in self.alerts]
            + ["passed_checks", "failed_checks"]
        )


def _split_names(values: Sequence[str]) -> list[str]:
    return [part.strip().lower() for value in values for part in value.split(",") if part.strip()]


@lru_cache(maxsize=None)
def _alert_catalog(name: str) -> FilterCatalog:
    params = FilterCatalogParams()
    params.AddCatalog(ALERT_CATALOGS[name])
    return FilterCatalog(params)


def compute_properties(mol: Chem.Mol) -> dict[str, float]:
    # Four decimals are more than any of these descriptors means, and keep output tables readable.
    return {name: round(float(function(mol)), 4) for name, function in PROPERTIES.items()}


def alert_names(mol: Chem.Mol, catalog_name: str) -> list[str]:
    return [entry.GetDescription() for entry in _alert_catalog(catalog_name).GetMatches(mol)]


def check_molecule(mol: Chem.Mol, config: CheckConfig) -> dict:
    """Properties, rule verdicts, alerts and the overall verdict of one sanitized molecule."""
    properties = compute_properties(mol)
    result: dict = {"status": "ok", "reason": "", **properties}
    failed: list[str] = []
    for name in config.rules:
        rule = RULES[name]
        passes = len(rule.violations(properties)) <= rule.max_violations
        result[f"passes_{name}"] = passes
        if not passes:
            failed.append(name)
    for name in config.alerts:
        matches = alert_names(mol, name)
        result[f"alerts_{name}"] = ";".join(matches)
        failed.extend(f"{name}:{match}" for match in matches)
    failed.extend(str(w) for w in config.windows if not w.holds(properties))
    result["passed_checks"] = not failed
    result["failed_checks"] = ";".join(failed)
    return result


def check_smiles(smiles: Sequence[str | None], config: CheckConfig) -> list[dict]:
    """One result row per input SMILES; unparsable ones get ``invalid_smiles`` and the reason."""
    rows = []
    for text in smiles:
        mol, reason = parse_smiles_with_reason(text)
        rows.append(check_molecule(mol, config) if mol is not None else invalid_row(reason, config))
    return rows


def invalid_row(reason: str, config: CheckConfig, status: str = "invalid_smiles") -> dict:
    row: dict = {column: math.nan for column in config.result_columns}
    row.update({"status": status, "reason": reason, "passed_checks": False, "failed_checks": status})
    for name in config.rules:
        row[f"passes_{name}"] = None
    for name in config.alerts:
        row[f"alerts_{name}"] = ""
    return row


def run_checks(
    smiles: Sequence[str | None],
    config: CheckConfig,
    read_errors: Sequence[str | None] | None = None,
    pool: ProcessPoolExecutor | None = None,
    index: pd.Index | None = None,
) -> pd.DataFrame:
    """One row of check results per input SMILES, in order (``config.result_columns``).

    Rows whose ``read_errors`` entry is set (e.g. an SDF record RDKit rejected) are not parsed again.
    With a ``pool`` the molecules are split across its worker processes.
    """
    read_errors = list(read_errors) if read_errors is not None else [None] * len(smiles)
    todo = [i for i, error in enumerate(read_errors) if error is None]
    texts = [smiles[i] for i in todo]
    if pool is not None and len(texts) >= 2 * MIN_ROWS_PER_TASK:
        workers = getattr(pool, "_max_workers", 2)
        size = max(MIN_ROWS_PER_TASK, -(-len(texts) // workers))
        parts = [texts[i : i + size] for i in range(0, len(texts), size)]
        checked = [row for part in pool.map(check_smiles, parts, [config] * len(parts)) for row in part]
    else:
        checked = check_smiles(texts, config)
    rows: list[dict] = [invalid_row(error, config, "invalid_molecule") if error else {} for error in read_errors]
    for i, row in zip(todo, checked):
        rows[i] = row
    return pd.DataFrame(rows, columns=config.result_columns, index=index)


def append_results(frame: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Input columns first, results after; a result column whose name the input already uses is
    suffixed ``_molgen`` so the user's column is never overwritten."""
    clashes = {c: f"{c}_molgen" for c in results.columns if c in frame.columns}
    return pd.concat([frame, results.rename(columns=clashes)], axis=1)


def check_frame(frame: pd.DataFrame, smiles_column: str, config: CheckConfig | None = None,
                pool: ProcessPoolExecutor | None = None) -> pd.DataFrame:
    """``frame`` with the check columns appended: the notebook entry point."""
    config = config or CheckConfig()
    smiles = [s if isinstance(s, str) else None for s in frame[smiles_column].tolist()]
    return append_results(frame, run_checks(smiles, config, pool=pool, index=frame.index))

"""The ``molgen`` command line (Typer): one module per command, what they share in :mod:`.common`.

Exit codes: 0 success, 2 usage error (bad option, unreadable input or checkpoint, unknown column or
check), 1 failure of a run that started (``--strict`` met a bad row, a file broke mid-read).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: a spinning thread holds a core that another job on a
# shared machine needs, and molgen generate then ran at a tenth of its speed beside two busy jobs
# (benchmarks/threads.py). It must be set before torch loads OpenMP; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from molgen import __version__  # noqa: E402
from molgen.cli.adapt import adapt  # noqa: E402
from molgen.cli.check import check  # noqa: E402
from molgen.cli.data import data_app  # noqa: E402
from molgen.cli.distill import distill  # noqa: E402
from molgen.cli.evaluate import evaluate  # noqa: E402
from molgen.cli.export import export  # noqa: E402
from molgen.cli.filter import filter_command  # noqa: E402
from molgen.cli.fit_near_miss import fit_near_miss  # noqa: E402
from molgen.cli.fit_properties import fit_properties  # noqa: E402
from molgen.cli.generate import generate  # noqa: E402
from molgen.cli.info import info  # noqa: E402
from molgen.cli.repair import repair  # noqa: E402
from molgen.cli.score import score  # noqa: E402
from molgen.cli.train import train  # noqa: E402

app = typer.Typer(
    help="molgen: generate, score and filter molecules with a DiScoFormer, checked by RDKit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help wraps long option names; Rich's panels cut them at 80 columns
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"molgen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """molgen: generate, score and filter molecules."""


for command in (check, train, distill, repair, generate, info, evaluate, score):
    app.command()(command)
app.command("filter")(filter_command)
app.command("fit-properties")(fit_properties)
app.command("fit-near-miss")(fit_near_miss)
app.command()(export)
app.command()(adapt)
app.add_typer(data_app, name="data")

__all__ = ["app"]

"""Notebooks are executed on a small setting, so they never rot."""

from pathlib import Path

import nbformat
import pytest
from conftest import shared_file
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, folder: Path = NOTEBOOKS) -> list:
    """Execute ``name`` with ``folder`` as its working folder; its code cells' outputs, none an error."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def images(outputs: list) -> int:
    return len([o for o in outputs if "image/png" in o.get("data", {})])


@pytest.mark.slow
def test_generate_and_rank_notebook_runs(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MOLGEN_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("MOLGEN_NOTEBOOK_N", "24")
    monkeypatch.setenv("MOLGEN_NOTEBOOK_STEPS", "8")
    assert images(run_notebook("generate_and_rank.ipynb")) >= 2  # the molecule grid and the density plot


@pytest.mark.slow
def test_score_library_notebook_runs(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MOLGEN_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.delenv("MOLGEN_LIBRARY", raising=False)  # the notebook's default: a bundled example file
    monkeypatch.setenv("MOLGEN_NOTEBOOK_ROWS", "200")
    assert images(run_notebook("score_library.ipynb")) >= 2


@pytest.mark.slow
def test_targeted_design_notebook_runs(monkeypatch):
    monkeypatch.delenv("MOLGEN_CHECKPOINT", raising=False)  # the bundled model: it has a property head
    monkeypatch.setenv("MOLGEN_NOTEBOOK_N", "16")
    monkeypatch.setenv("MOLGEN_NOTEBOOK_STEPS", "10")
    outputs = run_notebook("targeted_design.ipynb")
    assert images(outputs) >= 2  # histograms and the grid
    assert any("hits per second" in o.get("data", {}).get("text/plain", "") for o in outputs)


@pytest.mark.slow
def test_adapt_to_a_series_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MOLGEN_CHECKPOINT", raising=False)
    monkeypatch.setenv("MOLGEN_SET", str(shared_file("molnet/freesolv.csv")))
    monkeypatch.setenv("MOLGEN_NOTEBOOK_STEPS", "3")
    monkeypatch.setenv("MOLGEN_NOTEBOOK_N", "12")
    # A scratch working folder: the notebook writes its adapter file beside itself.
    assert images(run_notebook("adapt_to_a_series.ipynb", tmp_path)) >= 2  # the histogram and the grid
    assert (tmp_path / "freesolv_adapter.pt").stat().st_size < 2_000_000

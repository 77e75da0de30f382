"""Notebooks are executed on a small setting, so they never rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
def test_generate_and_rank_notebook_runs(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MOLGEN_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("MOLGEN_NOTEBOOK_N", "24")
    monkeypatch.setenv("MOLGEN_NOTEBOOK_STEPS", "8")
    notebook = nbformat.read(NOTEBOOKS / "generate_and_rank.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the molecule grid and the density plot


@pytest.mark.slow
def test_score_library_notebook_runs(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MOLGEN_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.delenv("MOLGEN_LIBRARY", raising=False)  # the notebook's default: a bundled example file
    monkeypatch.setenv("MOLGEN_NOTEBOOK_ROWS", "200")
    notebook = nbformat.read(NOTEBOOKS / "score_library.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2


@pytest.mark.slow
def test_targeted_design_notebook_runs(monkeypatch):
    monkeypatch.delenv("MOLGEN_CHECKPOINT", raising=False)  # the bundled model: it has a property head
    monkeypatch.setenv("MOLGEN_NOTEBOOK_N", "16")
    monkeypatch.setenv("MOLGEN_NOTEBOOK_STEPS", "10")
    notebook = nbformat.read(NOTEBOOKS / "targeted_design.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2  # histograms and the grid
    assert any("hits per second" in o.get("data", {}).get("text/plain", "") for o in outputs)


@pytest.mark.slow
def test_adapt_to_a_series_notebook_runs(tmp_path, monkeypatch):
    from conftest import shared_file

    monkeypatch.delenv("MOLGEN_CHECKPOINT", raising=False)
    monkeypatch.setenv("MOLGEN_SET", str(shared_file("molnet/freesolv.csv")))
    monkeypatch.setenv("MOLGEN_NOTEBOOK_STEPS", "3")
    monkeypatch.setenv("MOLGEN_NOTEBOOK_N", "12")
    notebook = nbformat.read(NOTEBOOKS / "adapt_to_a_series.ipynb", as_version=4)
    # Run in a scratch folder: the notebook writes its adapter file beside itself.
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2  # the histogram and the grid
    assert (tmp_path / "freesolv_adapter.pt").stat().st_size < 2_000_000

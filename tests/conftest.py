import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of the shared data folder; missing: skip locally, fail under CI (CI must see it)."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is required under CI but missing")
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own molgen cache so tests never see each other's prepared data."""
    monkeypatch.setenv("MOLGEN_CACHE", str(tmp_path / "molgen-cache"))
    monkeypatch.delenv("MOLGEN_QM9", raising=False)

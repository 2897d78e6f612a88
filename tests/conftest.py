"""Shared fixtures: tiny synthetic sites, the real-data folder, an isolated crop cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """``$BRAINMRI_DATA`` or ``../shared/data`` beside the repository, if present."""
    candidate = Path(os.environ.get("BRAINMRI_DATA", REPO.parent / "shared" / "data"))
    return candidate if (candidate / "br35h").is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real BR35H/NAV/MOS images not found (set BRAINMRI_DATA)")
    return found


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory) -> Path:
    """Every test session uses its own crop cache and MLflow store, never the user's."""
    cache = tmp_path_factory.mktemp("crop_cache")
    previous = {key: os.environ.get(key) for key in ("BRAINMRI_CACHE", "MLFLOW_TRACKING_URI")}
    os.environ["BRAINMRI_CACHE"] = str(cache)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    yield cache
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def synthetic_sites(tmp_path_factory) -> dict[str, Path]:
    """Three small phantom sites ``synth_a`` (train), ``synth_b`` (val), ``synth_c`` (test)."""
    from datasets.synthetic import write_demo_sites

    return write_demo_sites(tmp_path_factory.mktemp("sites"), images_per_class=24, size=64, seed=0)

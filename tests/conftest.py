"""Session-wide test setup: an isolated SYNTHRAD_HOME, CPU only, and the shared data path."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SYNTHRAD_SHARED_DATA", ROOT.parent / "shared" / "data"))
NIH64 = SHARED_DATA / "nih-chestxray14-64"


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("synthrad-home")
    os.environ["SYNTHRAD_HOME"] = str(home)
    os.environ.setdefault("SYNTHRAD_DEVICE", "cpu")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from services.common.config import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture
def nih64() -> Path:
    if not (NIH64 / "labels.csv").exists():
        pytest.skip(f"shared NIH data not found at {NIH64}")
    return NIH64

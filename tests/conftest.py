"""Session-wide test setup: an isolated SYNTHRAD_HOME, CPU only, and the shared data path."""

import os
from pathlib import Path

import pytest
from repo_paths import NIH64


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


class _SettingsMonkeyPatch(pytest.MonkeyPatch):
    """``monkeypatch`` whose env changes also drop the cached settings: ``SYNTHRAD_*`` variables are read by
    ``get_settings()`` once per process, so a test that sets one sees it on its next call."""

    def setenv(self, name, value, prepend=None):
        super().setenv(name, value, prepend)
        _clear_settings()

    def delenv(self, name, raising=True):
        super().delenv(name, raising)
        _clear_settings()

    def undo(self):
        super().undo()
        _clear_settings()


def _clear_settings() -> None:
    from services.common.config import get_settings

    get_settings.cache_clear()


@pytest.fixture
def monkeypatch():
    mp = _SettingsMonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture
def nih64() -> Path:
    if not (NIH64 / "labels.csv").exists():
        pytest.skip(f"shared NIH data not found at {NIH64}")
    return NIH64


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """The tiny Stable-Diffusion-format pipeline of tests/support/sd_tiny.py, built once per test module in a
    folder ``tiny-roentgen`` (``--model-path`` names the model after its folder)."""
    from sd_tiny import build_tiny_sd

    folder = tmp_path_factory.mktemp("checkpoints") / "tiny-roentgen"
    build_tiny_sd(folder)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a whole test module (the machine is shared); opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""ONE Ray + Serve instance for all end-to-end tests of the session (cold start ~8-15 s, ~1 GB RSS on these machines).

The platform serves the shipped default model when it is registered, plus two tiny test generators
(``tiny``, and ``tiny-fail`` which fails on one seed — a failing replica), and the metrics deployment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parents[1] / "support"  # the tests' shared helpers (serving_fakes)


@pytest.fixture(scope="package")  # one Ray for the session's e2e tests, stopped once they are done
def served(_isolated_home):
    pytest.importorskip("ray")
    # Replica processes import the tiny test generator from tests/support.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
    if str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))
    from services.common.config import get_settings
    from services.gateway.app import start_local
    from services.generator.registry import list_models

    get_settings.cache_clear()
    settings = get_settings()
    real = [m.model_id for m in list_models() if m.model_id == settings.default_model]
    models = real + ["tiny", "tiny-fail"]
    factories = {"tiny": "serving_fakes:make_tiny", "tiny-fail": "serving_fakes:make_tiny"}
    lp = start_local(settings, models=models, http_port=0, grpc_port=0, generator_factory=factories,
                     wait_ready_s=600)
    lp.real_model = real[0] if real else None  # type: ignore[attr-defined]
    try:
        yield lp
    finally:
        lp.shutdown()

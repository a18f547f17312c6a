"""The committed gRPC stubs are fresh (byte-for-byte equal to a regeneration) and import as a package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "synthrad" / "v1"


def test_stubs_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh = sorted(p.name for p in (tmp_path / "synthrad" / "v1").iterdir() if p.name != "__init__.py")
    committed = sorted(p.name for p in STUBS.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py")
    assert fresh == committed, "stub files differ; run scripts/gen_protos.sh"
    for name in fresh:
        assert (tmp_path / "synthrad" / "v1" / name).read_bytes() == (STUBS / name).read_bytes(), (
            f"synthrad/v1/{name} is stale; run scripts/gen_protos.sh and commit the result")


def test_stubs_import_as_package_from_anywhere(tmp_path):
    code = ("import synthrad.v1.generator_pb2_grpc as g, synthrad.v1.batch_pb2_grpc as b, "
            "synthrad.v1.metrics_pb2_grpc as m; "
            "print(g.GeneratorServiceStub.__name__, b.BatchServiceStub.__name__, m.MetricsServiceStub.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["GeneratorServiceStub", "BatchServiceStub", "MetricsServiceStub"]


def test_rpc_names_are_unique_across_services():
    # Serve's gRPC proxy routes by method name only, to one ingress deployment
    from services.gateway.grpc_api import METHODS
    from synthrad.v1 import batch_pb2, generator_pb2, metrics_pb2

    names = []
    for mod in (generator_pb2, batch_pb2, metrics_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            names += [m.name for m in svc.methods]
            assert [m.name for m in svc.methods] == METHODS[svc.name]
    assert len(names) == len(set(names))

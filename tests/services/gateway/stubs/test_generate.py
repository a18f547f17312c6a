"""The committed gRPC stubs are fresh, import as a package, and every RPC of the protos is implemented once."""

from __future__ import annotations

import subprocess
import sys

import pytest
from repo_paths import ROOT

STUBS = ROOT / "services" / "gateway" / "stubs"


def test_stubs_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    from services.gateway.stubs import generate

    # through the documented entry point (scripts/gen_protos.sh -> python -m services.gateway.stubs.generate)
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), "--out", str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh, committed = generate.committed(tmp_path), generate.committed(STUBS)
    assert sorted(fresh) == sorted(committed), "stub files differ; run scripts/gen_protos.sh"
    for name, data in fresh.items():
        assert committed[name] == data, (
            f"services/gateway/stubs/{name} is stale; run scripts/gen_protos.sh and commit the result")
    assert generate.stale() == []


def test_generated_imports_point_at_the_stubs_package():
    import re

    for path in STUBS.glob("*_pb2*.py*"):
        # module paths name the stubs package; proto names (synthrad.v1.GeneratorService) stay as they are
        assert not re.search(r"synthrad[./]v1[./]\w+_pb2", path.read_text()), path.name
    from services.gateway.stubs import common_pb2, metrics_pb2

    assert metrics_pb2.ScoreResult.__module__ == "services.gateway.stubs.metrics_pb2"
    # the protos keep their names and package: that is what the wire and gRPC reflection see
    assert common_pb2.DESCRIPTOR.name == "synthrad/v1/common.proto" and common_pb2.DESCRIPTOR.package == "synthrad.v1"


def test_stubs_import_as_package_from_anywhere(tmp_path):
    code = ("import services.gateway.stubs.generator_pb2_grpc as g, services.gateway.stubs.batch_pb2_grpc as b, "
            "services.gateway.stubs.metrics_pb2_grpc as m, sys; "
            "print(g.GeneratorServiceStub.__name__, b.BatchServiceStub.__name__, m.MetricsServiceStub.__name__); "
            "print('services.gateway.grpc_api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    # the stubs stand alone: importing them loads nothing of the gateway
    assert out.stdout.split() == ["GeneratorServiceStub", "BatchServiceStub", "MetricsServiceStub", "False"]


def test_rpcs_are_read_from_the_protos_and_unique():
    # Serve's gRPC proxy routes by method name only, to one ingress deployment
    from services.gateway.grpc_servicer import RPCS, SERVICER_FUNCTIONS
    from services.gateway.stubs import batch_pb2, generator_pb2, metrics_pb2

    names, streaming = [], set()
    for mod in (generator_pb2, batch_pb2, metrics_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            names += [m.name for m in svc.methods]
            streaming |= {m.name for m in svc.methods if m.server_streaming}
    assert [r.name for r in RPCS] == names and len(names) == len(set(names))
    assert {r.name for r in RPCS if r.streaming} == streaming == {"StreamGenerate", "WatchJob", "StreamBatchImages"}
    assert len(SERVICER_FUNCTIONS) == 3
    for fn in SERVICER_FUNCTIONS:  # importable the way Serve's proxy imports them
        mod, attr = fn.rsplit(".", 1)
        assert callable(getattr(__import__(mod, fromlist=[attr]), attr))


def test_every_rpc_has_one_grpc_api_method_and_both_adapters_have_it():
    from services.gateway.grpc_api import GrpcApi
    from services.gateway.grpc_servicer import RPCS, GrpcIngress, implementation

    impl = implementation(GrpcApi)  # raises naming any RPC without a method of the right kind
    assert list(impl) == [r.name for r in RPCS]
    for rpc in RPCS:
        method = getattr(GrpcIngress, rpc.name)  # what Serve's gRPC proxy calls
        assert method.__name__ == rpc.name


def test_an_rpc_without_a_method_is_refused():
    import inspect

    from services.gateway.grpc_api import GrpcApi
    from services.gateway.grpc_servicer import implementation

    class Incomplete(GrpcApi):
        GetScore = None

    class WrongKind(GrpcApi):
        async def WatchJob(self, request, caller=None):  # a coroutine, but WatchJob is server-streaming
            return None

    with pytest.raises(TypeError, match=r"MetricsService\.GetScore has no method"):
        implementation(Incomplete)
    with pytest.raises(TypeError, match=r"BatchService\.WatchJob is server-streaming"):
        implementation(WrongKind)
    assert inspect.isasyncgenfunction(GrpcApi.WatchJob)

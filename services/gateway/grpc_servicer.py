"""The gRPC surface, written once: the RPCs come from the protos, the handlers from :class:`GrpcApi`.

:data:`RPCS` (service, name, unary or server-streaming) is read from the generated protobuf service
descriptors (``protos/synthrad/v1/*.proto`` -> :mod:`services.gateway.stubs`); nothing here lists an RPC by
hand. :func:`implementation` binds each RPC to the :class:`~services.gateway.grpc_api.GrpcApi` method of the
same name (an async generator for a server-streaming RPC, a coroutine otherwise) and refuses an API that lacks
one. Every call runs through :func:`_call` — loopback guard, API key, scope, rate and request size
(``GrpcApi.authenticate``), the method, the request counter, error -> gRPC status (:func:`errors.grpc_status`).
Two adapters are generated from it:

* :class:`GrpcIngress`, a mixin of the Ray Serve ingress deployment (``app.Gateway``): one method per RPC,
  named like it, because Serve's gRPC proxy calls the ingress by method name (with ``grpc_context``);
  :data:`SERVICER_FUNCTIONS` are the ``add_*Servicer_to_server`` functions Serve's proxy registers;
* :func:`add_to_server`, the same servicer on a plain ``grpc.aio`` server (tests, embedding without Ray).

Serve's proxy routes by method name only, so RPC names must be unique across the services (checked here).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import grpc

from . import prometheus as m
from .errors import ApiError, Unauthenticated, api_error, grpc_status
from .net import peer_host, peer_is_loopback
from .stubs import batch_pb2, generator_pb2, metrics_pb2

if TYPE_CHECKING:
    from .grpc_api import GrpcApi

#: the generated modules whose services the gateway serves (their ``*_pb2_grpc`` twins hold the servicer glue)
PROTO_MODULES = (generator_pb2, batch_pb2, metrics_pb2)


@dataclass(frozen=True)
class Rpc:
    service: str     # e.g. "GeneratorService" (proto package synthrad.v1)
    name: str        # e.g. "StreamGenerate": the GrpcApi method and the Serve ingress method
    streaming: bool  # server-streaming (the method is an async generator)


def _read_rpcs() -> tuple[Rpc, ...]:
    rpcs = []
    for mod in PROTO_MODULES:
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for method in svc.methods:
                if method.client_streaming:
                    raise TypeError(f"{svc.full_name}.{method.name}: client-streaming RPCs are not supported")
                rpcs.append(Rpc(svc.name, method.name, bool(method.server_streaming)))
    names = [r.name for r in rpcs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:  # Serve's gRPC proxy could not tell them apart
        raise TypeError(f"RPC names must be unique across services (Serve routes by name): {', '.join(dupes)}")
    return tuple(rpcs)


#: every RPC of the served protos, in proto order
RPCS: tuple[Rpc, ...] = _read_rpcs()
#: ``module.add_<Service>Servicer_to_server`` per served service: Serve's ``grpc_servicer_functions``
SERVICER_FUNCTIONS: list[str] = [f"{mod.__name__}_grpc.add_{name}Servicer_to_server"
                                 for mod in PROTO_MODULES for name in mod.DESCRIPTOR.services_by_name]


def implementation(api: Any) -> dict[str, Callable]:
    """RPC name -> the method of ``api`` (a GrpcApi, or its class) that implements it. TypeError naming every RPC
    without a method, or with one of the wrong kind (server-streaming: async generator; unary: coroutine)."""
    out, problems = {}, []
    for rpc in RPCS:
        fn = getattr(api, rpc.name, None)
        if fn is None:
            problems.append(f"{rpc.service}.{rpc.name} has no method")
        elif rpc.streaming and not inspect.isasyncgenfunction(fn):
            problems.append(f"{rpc.service}.{rpc.name} is server-streaming: its method must be an async generator")
        elif not rpc.streaming and not inspect.iscoroutinefunction(fn):
            problems.append(f"{rpc.service}.{rpc.name} is unary: its method must be `async def` returning the reply")
        else:
            out[rpc.name] = fn
    if problems:
        raise TypeError(f"{getattr(api, '__name__', type(api).__name__)} does not implement the gRPC API: "
                        + "; ".join(problems))
    return out


# ---- one call ------------------------------------------------------------------------------------
def _classify(e: BaseException) -> tuple[str, ApiError | None]:
    """(status code name for the request counter, ApiError to send) — no ApiError for a cancelled call."""
    if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED", None
    err = api_error(e)
    return err.grpc_code.name, err


@dataclass
class _Call:
    """What a transport knows of one call. ``peer`` is the raw gRPC peer (``ipv4:1.2.3.4:5555``); None when
    there is no transport context (a deployment-handle call inside Ray), which the loopback guard lets pass.
    ``fail(code, details)`` sends the status and must raise."""

    metadata: Any
    peer: str | None
    fail: Callable
    loopback_only: bool = False

    def caller(self, api: "GrpcApi", rpc: Rpc, request):
        if self.loopback_only and self.peer is not None and not peer_is_loopback(self.peer):
            raise Unauthenticated("gRPC from non-loopback peers needs an API key configured on the server "
                                  "(SYNTHRAD_API_KEYS); this platform runs in local mode")
        return api.authenticate(rpc.name, self.metadata, peer_host(self.peer), request)


async def _call(api: "GrpcApi", impl: Callable, rpc: Rpc, request, call: _Call) -> Any:
    """Run one unary RPC: guard, auth, the method, count, map errors (``call.fail`` raises)."""
    code = "OK"
    try:
        return await impl(request, call.caller(api, rpc, request))
    except BaseException as e:  # noqa: BLE001
        code, err = _classify(e)
        if err is None:
            raise
        return await call.fail(*grpc_status(err))
    finally:
        m.count_request("grpc", rpc.name, code)


async def _call_stream(api: "GrpcApi", impl: Callable, rpc: Rpc, request, call: _Call) -> AsyncIterator:
    """Run one server-streaming RPC, like :func:`_call`."""
    code = "OK"
    try:
        async for item in impl(request, call.caller(api, rpc, request)):
            yield item
    except BaseException as e:  # noqa: BLE001
        code, err = _classify(e)
        if err is None:
            raise
        await call.fail(*grpc_status(err))
    finally:
        m.count_request("grpc", rpc.name, code)


def _named(fn: Callable, owner: str, rpc: Rpc) -> Callable:
    fn.__name__ = rpc.name  # Serve looks methods up (and reports them) by this name
    fn.__qualname__ = f"{owner}.{rpc.name}"
    fn.__doc__ = f"RPC {rpc.service}.{rpc.name}" + (" (server-streaming)" if rpc.streaming else "")
    return fn


# ---- adapter 1: Ray Serve's gRPC proxy -----------------------------------------------------------------
class GrpcFailure(Exception):
    """Raised after setting the gRPC status on Serve's context; Serve's proxy then sends that status."""


class GrpcIngress:
    """Mixin of the Serve ingress deployment: one method per RPC (added below from :data:`RPCS`), which Serve's
    gRPC proxy calls by name with ``grpc_context``. The deployment's ``__init__`` calls :meth:`serve_grpc`."""

    _grpc_api: "GrpcApi"
    _grpc_impl: dict[str, Callable]
    _grpc_loopback_only: bool = False

    def serve_grpc(self, api: "GrpcApi", loopback_only: bool) -> None:
        """Serve ``api``; with ``loopback_only`` (local mode: no API keys) refuse calls of non-loopback peers —
        Serve's gRPC proxy listens on every interface when ``serve.host`` does."""
        self._grpc_api, self._grpc_impl = api, implementation(api)
        self._grpc_loopback_only = bool(loopback_only)

    def _grpc_call(self, ctx) -> _Call:
        async def fail(code: grpc.StatusCode, details: str):
            if ctx is not None:
                ctx.set_code(code)
                ctx.set_details(details)
            raise GrpcFailure(details)

        peer = None
        if ctx is not None:
            try:
                peer = ctx.peer() or ""
            except Exception:  # noqa: BLE001 - Serve's context may not know it
                peer = ""
        return _Call(ctx.invocation_metadata() if ctx is not None else [], peer, fail, self._grpc_loopback_only)


def _ingress_method(rpc: Rpc) -> Callable:
    if rpc.streaming:
        async def method(self: GrpcIngress, request, grpc_context=None):
            async for item in _call_stream(self._grpc_api, self._grpc_impl[rpc.name], rpc, request,
                                           self._grpc_call(grpc_context)):
                yield item
    else:
        async def method(self: GrpcIngress, request, grpc_context=None):
            return await _call(self._grpc_api, self._grpc_impl[rpc.name], rpc, request, self._grpc_call(grpc_context))
    return _named(method, "GrpcIngress", rpc)


for _rpc in RPCS:
    setattr(GrpcIngress, _rpc.name, _ingress_method(_rpc))
del _rpc


# ---- adapter 2: a plain grpc.aio server ------------------------------------------------------------------
def servicer_functions() -> list[Callable]:
    """The ``add_<Service>Servicer_to_server`` functions named by :data:`SERVICER_FUNCTIONS`."""
    out = []
    for path in SERVICER_FUNCTIONS:
        mod, attr = path.rsplit(".", 1)
        out.append(getattr(importlib.import_module(mod), attr))
    return out


def _aio_handler(api: "GrpcApi", impl: Callable, rpc: Rpc, loopback_only: bool) -> Callable:
    def call_of(context) -> _Call:
        async def fail(code: grpc.StatusCode, details: str):
            await context.abort(code, details)

        return _Call(context.invocation_metadata(), context.peer(), fail, loopback_only)

    if rpc.streaming:
        async def handler(request, context):
            async for item in _call_stream(api, impl, rpc, request, call_of(context)):
                yield item
    else:
        async def handler(request, context):
            return await _call(api, impl, rpc, request, call_of(context))
    return _named(handler, "AioServicer", rpc)


class AioServicer:
    """One servicer object for every service: an attribute per RPC, as the generated ``add_*`` functions want."""

    def __init__(self, api: "GrpcApi", loopback_only: bool = False):
        impl = implementation(api)
        for rpc in RPCS:
            setattr(self, rpc.name, _aio_handler(api, impl[rpc.name], rpc, loopback_only))


def add_to_server(api: "GrpcApi", server: grpc.aio.Server, loopback_only: bool = False) -> None:
    """Register every service of ``api`` on a plain ``grpc.aio`` server."""
    servicer = AioServicer(api, loopback_only)
    for add in servicer_functions():
        add(servicer, server)


__all__ = ["RPCS", "Rpc", "SERVICER_FUNCTIONS", "GrpcIngress", "GrpcFailure", "AioServicer", "add_to_server",
           "implementation", "servicer_functions"]

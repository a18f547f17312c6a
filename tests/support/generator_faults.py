"""In-process stand-ins for a generator replica that dies (no Ray), for the retry and resume tests."""

from __future__ import annotations

from services.generator.generation import LocalGenerators


class ReplicaLost(Exception):
    """Stands for Ray's ActorDiedError in process: the machinery failed, not the model."""


class FlakyGenerators(LocalGenerators):
    """Real in-process generators whose first ``failures`` calls fail as if the replica had died (a transient
    error: the same chunk is sent again)."""

    def __init__(self, replicas, failures: int):
        super().__init__(replicas)
        self.failures = failures

    async def generate(self, model_id, chunk):
        if self.failures > 0:
            self.failures -= 1
            raise ReplicaLost("replica died")
        return await super().generate(model_id, chunk)

    def is_transient(self, exc):
        return isinstance(exc, ReplicaLost)


class QueueFull(Exception):
    """Stands for Serve's BackPressureError in process: the model's request queue is full."""


class BusyGenerators(LocalGenerators):
    """Real in-process generators whose first ``busy`` calls find the model's queue full."""

    def __init__(self, replicas, busy: int):
        super().__init__(replicas)
        self.busy, self.calls = busy, 0

    async def generate(self, model_id, chunk):
        self.calls += 1
        if self.busy > 0:
            self.busy -= 1
            raise QueueFull("queue full")
        return await super().generate(model_id, chunk)

    def is_transient(self, exc):
        return isinstance(exc, QueueFull)

    def is_overload(self, exc):
        return isinstance(exc, QueueFull)

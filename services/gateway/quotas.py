"""Per-key request rates and image quotas, and the lockout of peers that fail authentication too often.

All three are token buckets kept in the gateway replica's memory (each replica enforces its own share; with N
replicas behind a load balancer a key gets at most N times its limit — state the per-replica numbers so). A
refused request is :class:`~services.gateway.errors.RateLimited` (HTTP 429 / RESOURCE_EXHAUSTED) carrying
``retry_after_s``, which REST sends as ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from services.common.config import ApiKeySpec, SecuritySettings
from services.common.logging import get_logger

from .errors import InvalidArgument, RateLimited

log = get_logger(__name__)

DAY_S = 86_400.0


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second."""

    capacity: float
    rate: float
    tokens: float = -1.0
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens; returns 0.0 on success, else the seconds until ``n`` would be available."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate if self.rate > 0 else math.inf

    def give_back(self, n: float) -> None:
        self.tokens = min(self.capacity, self.tokens + n)


class KeyLimiter:
    """Request rate (``requests_per_minute``) and image quota (``images_per_day``) of each API key."""

    def __init__(self, specs: list[ApiKeySpec], clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, TokenBucket] = {}
        self._images: dict[str, TokenBucket] = {}
        for k in specs:
            if k.requests_per_minute:
                self._requests[k.id] = TokenBucket(float(k.requests_per_minute), k.requests_per_minute / 60.0)
            if k.images_per_day:
                self._images[k.id] = TokenBucket(float(k.images_per_day), k.images_per_day / DAY_S)

    def request(self, key_id: str | None) -> None:
        bucket = self._requests.get(key_id or "")
        if bucket is None:
            return
        with self._lock:
            wait = bucket.take(1, self._clock())
        if wait:
            raise RateLimited(f"API key {key_id!r} exceeded its rate of {int(bucket.capacity)} requests per minute; "
                              f"retry after {math.ceil(wait)} s", retry_after_s=wait)

    def images(self, key_id: str | None, n: int) -> None:
        """Charge ``n`` images to the key's quota (before any work starts)."""
        bucket = self._images.get(key_id or "")
        if bucket is None or n <= 0:
            return
        if n > bucket.capacity:
            raise InvalidArgument(f"{n} images exceed API key {key_id!r}'s quota of {int(bucket.capacity)} images "
                                  "per day; ask for fewer")
        with self._lock:
            wait = bucket.take(n, self._clock())
        if wait:
            raise RateLimited(f"API key {key_id!r} has used its quota of {int(bucket.capacity)} images per day; "
                              f"{n} more are available in {math.ceil(wait)} s", retry_after_s=wait)

    def refund(self, key_id: str | None, n: int) -> None:
        """Give back images charged for a request that was then refused (e.g. an invalid param)."""
        bucket = self._images.get(key_id or "")
        if bucket is not None and n > 0:
            with self._lock:
                bucket.give_back(n)


@dataclass
class _PeerFailures:
    bucket: TokenBucket
    locked_until: float = 0.0
    suppressed: int = 0
    last_log: float = field(default=-math.inf)


class AuthFailureGuard:
    """Locks out a peer (client address) that fails authentication more than ``auth_failures_per_minute``
    times in a minute, for ``lockout_s`` seconds; and logs failures at most once a minute per peer (with a
    count of the ones not logged), so a flood of bad keys does not flood the log."""

    LOG_EVERY_S = 60.0
    MAX_PEERS = 10_000

    def __init__(self, settings: SecuritySettings, clock: Callable[[], float] = time.monotonic):
        self.per_minute = int(settings.auth_failures_per_minute)
        self.lockout_s = float(settings.lockout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._peers: dict[str, _PeerFailures] = {}

    def check(self, peer: str) -> None:
        """Raise :class:`RateLimited` while ``peer`` is locked out."""
        with self._lock:
            st = self._peers.get(peer)
            now = self._clock()
            if st is None or st.locked_until <= now:
                return
            wait = st.locked_until - now
        raise RateLimited(f"too many failed authentications from this client; retry after {math.ceil(wait)} s",
                          retry_after_s=wait)

    def failed(self, peer: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            st = self._peers.get(peer)
            if st is None:
                if len(self._peers) >= self.MAX_PEERS:  # bounded memory under a distributed flood
                    self._peers.pop(next(iter(self._peers)))
                st = self._peers[peer] = _PeerFailures(TokenBucket(float(self.per_minute), self.per_minute / 60.0))
            if st.bucket.take(1, now) or st.bucket.tokens < 1:  # this failure used up the allowance
                st.locked_until = now + self.lockout_s
            if now - st.last_log >= self.LOG_EVERY_S:
                suppressed, st.suppressed, st.last_log = st.suppressed, 0, now
                locked = st.locked_until > now
            else:
                st.suppressed += 1
                return
        log.warning("authentication failed", extra={"peer": peer, "reason": reason, "locked_out": locked,
                                                    "failures_not_logged": suppressed})


__all__ = ["TokenBucket", "KeyLimiter", "AuthFailureGuard"]

"""Addresses: the one judge of "is this loopback" and the one parser of gRPC peers (auth, Ray, gRPC guard)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1, ::ffff:127.x) — never a DNS name that merely
    starts with "127." (``127.0.0.1.attacker.example`` resolves wherever its owner wants)."""
    host = (host or "").strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def peer_host(peer: str | None) -> str:
    """A gRPC peer (``ipv4:1.2.3.4:5555``, ``ipv6:[::1]:5555``) -> its address without the port, so limits and
    lockouts apply per client, not per connection; ``unix:...`` peers are returned as they are."""
    if not peer or peer.startswith("unix:"):
        return peer or ""
    return peer.split(":", 1)[-1].rsplit(":", 1)[0].strip("[]")


def peer_is_loopback(peer: str) -> bool:
    """A gRPC peer on this machine (a loopback address or a unix socket)."""
    return peer.startswith("unix:") or is_loopback(peer_host(peer))


__all__ = ["is_loopback", "peer_host", "peer_is_loopback"]

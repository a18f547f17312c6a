"""Append-only audit log: who generated, stored, scored or deleted what.

One JSON object per line (``time``, ``action``, ``key_id``, ``peer``, ``outcome`` and the objects involved:
``model``, ``count``, ``batch_id``, ``job_id``, ``reference``) appended to ``settings.resolved_audit_log``
(default ``$SYNTHRAD_HOME/audit.log``). The key id is recorded, never the key. Each record is one
``write`` on a file opened with ``O_APPEND`` and is flushed to disk, so replicas on one machine may share
the file and a crash loses at most the record being written. Prompts are not logged (they may hold
patient-like text); batch manifests keep them for the key that owns the batch.

Actions: ``generate`` (inline/streamed), ``batch.create`` (job accepted), ``batch.stored`` (job committed a
batch), ``batch.delete``, ``score.create``, ``evaluation.create``, ``auth.denied`` (an authenticated key without the scope).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from services.common.logging import get_logger
from services.common.provenance import utc_now

log = get_logger(__name__)

ACTIONS = ("generate", "batch.create", "batch.stored", "batch.delete", "score.create", "evaluation.create", "auth.denied",
           "study.denied", "study.export", "study.add_reader")


class AuditLog:
    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._warned = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, action: str, key_id: str | None, outcome: str = "ok", peer: str = "", **fields: Any) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if self.path is None:
            return
        entry = {"time": utc_now(), "action": action, "key_id": key_id, "peer": peer, "outcome": outcome,
                 **{k: v for k, v in fields.items() if v is not None}}
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:  # the action itself already happened: say so loudly, once
            if not self._warned:
                self._warned = True
                log.error("audit log not writable", extra={"error": e.strerror or str(e)})

    def read(self) -> list[dict]:
        """Every record (tests and `synthrad` admin tooling)."""
        if self.path is None or not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a crash
        return out


__all__ = ["AuditLog", "ACTIONS"]

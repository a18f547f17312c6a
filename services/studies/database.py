"""The SQLite file of the reader studies: designs, de-identified images, answer keys, readers, answers.

One file holds every study (``studies.db`` setting, default HOME/studies.sqlite3), so a study can be copied to a
reading workstation as one file. Journal mode WAL with ``synchronous=FULL``: a committed answer survives a
crash or power loss. Every write is ONE transaction (``BEGIN IMMEDIATE``): a study is created whole or not at
all, and an answer is stored whole (answer + its history row) or not at all.

No duplicates by construction: ``answers`` has one row per (reader, case) (PRIMARY KEY) and one per (reader,
idempotency key) (UNIQUE), so a refresh, a double click or a retried request can never store an answer twice.
``answer_log`` keeps every accepted submission (revisions included) for the audit trail.

Secrets are stored as sha256 digests only (reader tokens, owner keys).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, instructions TEXT NOT NULL, allow_revise INTEGER NOT NULL,
    likert INTEGER NOT NULL, modes TEXT NOT NULL, image_size INTEGER NOT NULL, seed INTEGER NOT NULL,
    created TEXT NOT NULL, owner_key_sha256 TEXT NOT NULL, design_sha256 TEXT NOT NULL, design TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id), png BLOB NOT NULL, sha256 TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('real', 'synthetic')), model_id TEXT, model_hash TEXT,
    origin TEXT NOT NULL, seed INTEGER, condition TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id), ordinal INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('pair', 'single')), truth TEXT NOT NULL, source TEXT NOT NULL,
    strata TEXT NOT NULL, likert TEXT NOT NULL, UNIQUE (study_id, ordinal));
CREATE TABLE IF NOT EXISTS case_images (
    case_id TEXT NOT NULL REFERENCES cases(id), slot TEXT NOT NULL, image_id TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (case_id, slot));
CREATE TABLE IF NOT EXISTS readers (
    id TEXT NOT NULL, study_id TEXT NOT NULL REFERENCES studies(id), name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE, created TEXT NOT NULL, PRIMARY KEY (study_id, id));
CREATE TABLE IF NOT EXISTS reader_cases (
    study_id TEXT NOT NULL, reader_id TEXT NOT NULL, position INTEGER NOT NULL, case_id TEXT NOT NULL,
    PRIMARY KEY (study_id, reader_id, position), UNIQUE (study_id, reader_id, case_id));
CREATE TABLE IF NOT EXISTS answers (
    study_id TEXT NOT NULL, reader_id TEXT NOT NULL, case_id TEXT NOT NULL, choice TEXT NOT NULL,
    likert TEXT NOT NULL, idempotency_key TEXT NOT NULL, answered_at TEXT NOT NULL, revision INTEGER NOT NULL,
    PRIMARY KEY (study_id, reader_id, case_id), UNIQUE (study_id, reader_id, idempotency_key));
CREATE TABLE IF NOT EXISTS answer_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, study_id TEXT NOT NULL, reader_id TEXT NOT NULL, case_id TEXT NOT NULL,
    choice TEXT NOT NULL, likert TEXT NOT NULL, idempotency_key TEXT NOT NULL, answered_at TEXT NOT NULL,
    revision INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS answer_log_key ON answer_log (study_id, reader_id, idempotency_key);
"""


class StudyDB:
    """Connections to the study file (one per operation: safe from any thread of a web server)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self._ready:
            try:  # a database made before: its schema and WAL mode are in the file (no write lock needed)
                conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._ready = True
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reading; a database that does not exist yet is not created by a read."""
        if not self._ready and not self.path.exists():
            from .errors import StudyNotFound

            raise StudyNotFound("there are no studies here yet: create one with `synthrad study create`")
        try:
            conn = self._connect()
        except sqlite3.OperationalError as e:
            raise _busy(e) from e
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def read_optional(self) -> Iterator[sqlite3.Connection | None]:
        """Like :meth:`read`, but None when the database does not exist yet."""
        if not self._ready and not self.path.exists():
            yield None
            return
        with self.read() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back (nothing stored) if it raises. A
        database locked past the busy timeout is :class:`~.errors.StudyBusy` (retry), not a crash."""
        try:
            conn = self._connect()
        except sqlite3.OperationalError as e:
            raise _busy(e) from e
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise _busy(e) from e
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                raise _busy(e) from e
        finally:
            conn.close()

    def exists(self) -> bool:
        return self.path.exists()


def _busy(e: sqlite3.OperationalError) -> Exception:
    from .errors import StudyBusy

    text = str(e).lower()
    if "locked" in text or "busy" in text:
        return StudyBusy("the study database is busy: retry in a moment")
    return e


def dumps(value) -> str:
    """Canonical JSON for stored columns (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


__all__ = ["SCHEMA_VERSION", "StudyDB", "dumps"]

"""The use cases of reader studies, over one :class:`~.database.StudyDB`: ONE implementation for the REST routes
(``services.gateway.studies_rest``, mounted on the gateway and in ``synthrad study serve``) and the CLI.

Access: a reader token (``<study>.r.<secret>``) opens that reader's cases of that study and nothing else; the
owner key (``<study>.o.<secret>``) opens the study's progress, results, report, export and reader management.
Readers never receive the answer key: case views carry opaque image ids, the slots and the questions only.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
import secrets
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Callable, Sequence

from .database import StudyDB, dumps
from .design import (PlannedCase, StudyPlan, check_reader_name, check_study_id, design_document, new_study_id,
                     read_pixels, reader_order)
from .errors import StudyConflict, StudyDamaged, StudyError, StudyNotFound, StudyUnauthenticated
from .images import deidentified_png, sha256
from .model import (CHOICES, LIKERT_LEVELS, SLOTS, AnswerRow, CaseView, ImageView, LikertQuestion, LikertRow, Reader,
                    StudyInfo)

_TOKEN_RE = re.compile(r"^([a-z0-9][a-z0-9-]{0,39})\.([ro])\.([A-Za-z0-9_-]{20,100})$")
_IDEMPOTENCY_RE = re.compile(r"^[A-Za-z0-9_-]{8,100}$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _token(study_id: str, kind: str) -> str:
    return f"{study_id}.{kind}.{secrets.token_urlsafe(32)}"


def study_of_token(token: str | None) -> str | None:
    """The study id a token names (None when it is not a study token)."""
    m = _TOKEN_RE.match(token or "")
    return m.group(1) if m else None


class Created:
    """What ``create`` returns: the study and its secrets (shown once; only their digests are stored)."""

    def __init__(self, info: StudyInfo, owner_key: str, reader_tokens: dict[str, str], design_sha256: str,
                 warnings: Sequence[str] = ()):
        self.info, self.owner_key, self.reader_tokens, self.design_sha256 = info, owner_key, reader_tokens, design_sha256
        self.warnings = list(warnings)


class StudyService:
    def __init__(self, db: StudyDB | str):
        self.db = db if isinstance(db, StudyDB) else StudyDB(db)

    # ---- creation ------------------------------------------------------------------------------------------
    def create(self, plan: StudyPlan, cases: Sequence[PlannedCase],
               progress: Callable[[int, int], None] | None = None) -> Created:
        """Store a planned study: every image is de-identified first, then ONE short transaction stores the
        study, its cases, images, owner key and one token per reader (nothing half-stored; readers of other
        studies in the same file wait only for the insert)."""
        study_id = check_study_id(plan.study_id or new_study_id())
        if not cases:
            raise StudyError("the study has no cases")
        used = [id(im) for c in cases for im in c.images.values()]
        if len(used) != len(set(used)):
            raise StudyError("an image would appear in two cases: give each batch once")
        size = plan.image_size or max(max(im.pixels.shape) for c in cases for im in c.images.values()
                                      if im.source == "synthetic" and im.pixels is not None)
        design = design_document(plan, cases)
        design_sha = hashlib.sha256(dumps(design).encode()).hexdigest()
        owner_key = _token(study_id, "o")
        with self.db.read_optional() as conn:  # fail early, before the images are processed
            if conn is not None and conn.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone():
                raise StudyConflict(f"study {study_id!r} exists already: choose another --id")
        pngs: list[dict[str, tuple[str, bytes]]] = []
        smallest_real = None
        for ordinal, case in enumerate(cases):
            row = {}
            for slot, im in case.images.items():
                pixels = read_pixels(im)
                if im.source == "real":
                    smallest_real = min(smallest_real or 10**9, min(pixels.shape[:2]))
                row[slot] = (secrets.token_hex(12), deidentified_png(pixels, size))
            pngs.append(row)
            if progress:
                progress(ordinal + 1, len(cases))
        warnings = []
        if smallest_real is not None and smallest_real < size:
            warnings.append(f"some real images ({smallest_real} px) are smaller than the study size ({size} px) and "
                            "are upscaled (blurred): readers may tell them apart by sharpness; use --image-size "
                            f"{smallest_real} or larger real images")
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone():
                raise StudyConflict(f"study {study_id!r} exists already: choose another --id")
            conn.execute("INSERT INTO studies VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                         (study_id, plan.title, plan.instructions_text, int(plan.allow_revise), int(plan.likert),
                          ",".join(plan.modes), size, plan.seed, _now(), _digest(owner_key), design_sha,
                          dumps(design)))
            for ordinal, (case, row) in enumerate(zip(cases, pngs)):
                case_id = "c" + secrets.token_hex(8)
                conn.execute("INSERT INTO cases VALUES (?,?,?,?,?,?,?,?)",
                             (case_id, study_id, ordinal, case.kind, case.truth, case.source,
                              dumps([list(s) for s in case.strata]), dumps(case.likert)))
                for slot, im in case.images.items():
                    image_id, png = row[slot]
                    conn.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 (image_id, study_id, png, sha256(png), im.source, im.model_id, im.model_hash,
                                  im.origin, im.seed, dumps(im.condition.to_json_dict())))
                    conn.execute("INSERT INTO case_images VALUES (?,?,?)", (case_id, slot, image_id))
            tokens = {name: self._insert_reader(conn, study_id, name, plan.seed) for name in plan.readers}
        return Created(self.info(study_id), owner_key, tokens, design_sha, warnings)

    def _insert_reader(self, conn, study_id: str, name: str, seed: int) -> str:
        index = conn.execute("SELECT COUNT(*) FROM readers WHERE study_id = ?", (study_id,)).fetchone()[0]
        reader_id = f"r{index + 1}"
        token = _token(study_id, "r")
        conn.execute("INSERT INTO readers VALUES (?,?,?,?,?)", (reader_id, study_id, name, _digest(token), _now()))
        rows = conn.execute("SELECT id, kind FROM cases WHERE study_id = ? ORDER BY ordinal", (study_id,)).fetchall()
        ids = [r[0] for r in rows]
        for position, ordinal in enumerate(reader_order([r[1] for r in rows], seed, index)):
            conn.execute("INSERT INTO reader_cases VALUES (?,?,?,?)", (study_id, reader_id, position, ids[ordinal]))
        return token

    def add_reader(self, study_id: str, name: str) -> tuple[Reader, str]:
        name = check_reader_name(name)
        with self.db.write() as conn:
            row = conn.execute("SELECT seed FROM studies WHERE id = ?", (study_id,)).fetchone()
            if row is None:
                raise StudyNotFound(f"no study {study_id!r}")
            if conn.execute("SELECT 1 FROM readers WHERE study_id = ? AND name = ?", (study_id, name)).fetchone():
                raise StudyConflict(f"the study has a reader named {name!r} already")
            token = self._insert_reader(conn, study_id, name, row["seed"])
            rid = conn.execute("SELECT id FROM readers WHERE token_sha256 = ?", (_digest(token),)).fetchone()[0]
        return Reader(rid, name), token

    # ---- access ----------------------------------------------------------------------------------------------
    def authenticate_reader(self, study_id: str, token: str | None) -> Reader:
        m = _TOKEN_RE.match(token or "")
        if not m or m.group(1) != study_id or m.group(2) != "r":
            raise StudyUnauthenticated("sign in with your reader token for this study (Authorization: Bearer …)")
        row = self._row_if_any("SELECT id, name FROM readers WHERE study_id = ? AND token_sha256 = ?",
                               (study_id, _digest(token)))
        if row is None:
            raise StudyUnauthenticated("this reader token is not valid for this study: ask the study owner for yours")
        return Reader(row["id"], row["name"])

    def authenticate_owner(self, study_id: str, key: str | None) -> None:
        m = _TOKEN_RE.match(key or "")
        if not m or m.group(1) != study_id or m.group(2) != "o":
            raise StudyUnauthenticated("this needs the study's owner key (Authorization: Bearer …)")
        row = self._row_if_any("SELECT owner_key_sha256 FROM studies WHERE id = ?", (study_id,))
        if row is None or not hmac.compare_digest(row[0], _digest(key)):
            raise StudyUnauthenticated("the owner key is not valid for this study")

    def _row_if_any(self, sql: str, args: tuple):
        """One row, or None — also when there is no database yet (a token check never creates one)."""
        with self.db.read_optional() as conn:
            return None if conn is None else conn.execute(sql, args).fetchone()

    # ---- what readers and owners see --------------------------------------------------------------------------
    def info(self, study_id: str) -> StudyInfo:
        with self.db.read() as conn:
            s = conn.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()
            if s is None:
                raise StudyNotFound(f"no study {study_id!r}")
            n = conn.execute("SELECT COUNT(*) FROM cases WHERE study_id = ?", (study_id,)).fetchone()[0]
            readers = [Reader(r["id"], r["name"]) for r in conn.execute(
                "SELECT id, name FROM readers WHERE study_id = ? ORDER BY rowid", (study_id,))]
        return StudyInfo(s["id"], s["title"], s["instructions"], bool(s["allow_revise"]), bool(s["likert"]),
                         tuple(s["modes"].split(",")), n, s["image_size"], s["created"], s["seed"], readers,
                         s["design_sha256"])

    @staticmethod
    def _verify_design(conn, study_id: str) -> None:
        """The answer key as stored (cases, sides, image origins) must be the design its sha256 was made of."""
        s = conn.execute("SELECT design, design_sha256 FROM studies WHERE id = ?", (study_id,)).fetchone()
        if s is None:
            raise StudyNotFound(f"no study {study_id!r}")
        damaged = StudyDamaged(f"the answer key of study {study_id} does not match its design sha256: restore the "
                               "study database from a backup")
        if hashlib.sha256(s["design"].encode()).hexdigest() != s["design_sha256"]:
            raise damaged
        images: dict[str, dict[str, str]] = {}
        for r in conn.execute("SELECT ci.case_id, ci.slot, i.origin FROM case_images ci JOIN images i ON "
                              "i.id = ci.image_id WHERE i.study_id = ?", (study_id,)):
            images.setdefault(r["case_id"], {})[r["slot"]] = r["origin"]
        stored = [{"kind": c["kind"], "truth": c["truth"], "source": c["source"], "strata": json.loads(c["strata"]),
                   "images": dict(sorted(images.get(c["id"], {}).items()))}
                  for c in conn.execute("SELECT * FROM cases WHERE study_id = ? ORDER BY ordinal", (study_id,))]
        if stored != json.loads(s["design"])["cases"]:
            raise damaged

    def list_studies(self) -> list[StudyInfo]:
        if not self.db.exists():
            return []
        with self.db.read() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM studies ORDER BY created")]
        return [self.info(i) for i in ids]

    def progress(self, study_id: str) -> list[dict]:
        with self.db.read() as conn:
            total = conn.execute("SELECT COUNT(*) FROM cases WHERE study_id = ?", (study_id,)).fetchone()[0]
            rows = conn.execute(
                "SELECT r.id, r.name, COUNT(a.case_id) AS answered, MAX(a.answered_at) AS last FROM readers r "
                "LEFT JOIN answers a ON a.study_id = r.study_id AND a.reader_id = r.id WHERE r.study_id = ? "
                "GROUP BY r.id ORDER BY r.rowid", (study_id,)).fetchall()
        return [{"reader_id": r["id"], "name": r["name"], "answered": r["answered"], "total": total,
                 "last_answer_at": r["last"]} for r in rows]

    def answered(self, study_id: str, reader: Reader) -> tuple[int, int]:
        with self.db.read() as conn:
            return self._answered(conn, study_id, reader.id)

    @staticmethod
    def _answered(conn, study_id: str, reader_id: str) -> tuple[int, int]:
        done = conn.execute("SELECT COUNT(*) FROM answers WHERE study_id = ? AND reader_id = ?",
                            (study_id, reader_id)).fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM reader_cases WHERE study_id = ? AND reader_id = ?",
                             (study_id, reader_id)).fetchone()[0]
        return done, total

    def case_at(self, study_id: str, reader: Reader, position: int | None = None) -> CaseView | None:
        """The reader's case at ``position`` (None: the first unanswered one; None is returned when every case is
        answered). An answered case can be reopened only when the study allows revising."""
        with self.db.read() as conn:
            answered, total = self._answered(conn, study_id, reader.id)
            if position is None:
                if answered >= total:
                    return None
                position = answered
            if not 0 <= position < total:
                raise StudyNotFound(f"no case at position {position}: this reader has cases 0-{total - 1}")
            if position > answered:
                raise StudyConflict(f"case {position + 1} comes after the current one ({answered + 1}): answer in order")
            if position < answered:
                revise = conn.execute("SELECT allow_revise FROM studies WHERE id = ?", (study_id,)).fetchone()[0]
                if not revise:
                    raise StudyConflict("this study does not allow going back to change an answer")
            rc = conn.execute("SELECT case_id FROM reader_cases WHERE study_id = ? AND reader_id = ? AND position = ?",
                              (study_id, reader.id, position)).fetchone()
            return self._view(conn, study_id, reader, rc[0], position, total)

    def _view(self, conn, study_id: str, reader: Reader, case_id: str, position: int, total: int) -> CaseView:
        case = conn.execute("SELECT kind, likert FROM cases WHERE id = ?", (case_id,)).fetchone()
        slots = {r["slot"]: r["image_id"] for r in conn.execute(
            "SELECT slot, image_id FROM case_images WHERE case_id = ?", (case_id,))}
        answer = conn.execute("SELECT choice, likert FROM answers WHERE study_id = ? AND reader_id = ? AND case_id = ?",
                              (study_id, reader.id, case_id)).fetchone()
        kind = case["kind"]
        return CaseView(case_id, position, total, kind, tuple(ImageView(s, slots[s]) for s in SLOTS[kind]),
                        CHOICES[kind], tuple(LikertQuestion(q["slot"], q["finding"], q["text"])
                                             for q in json.loads(case["likert"])),
                        {"choice": answer["choice"], "likert": json.loads(answer["likert"])} if answer else None)

    def image(self, study_id: str, reader: Reader, image_id: str) -> bytes:
        """An image of one of the reader's cases, its bytes checked against the stored sha256."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT i.png, i.sha256 FROM images i JOIN case_images ci ON ci.image_id = i.id "
                "JOIN reader_cases rc ON rc.case_id = ci.case_id WHERE i.id = ? AND i.study_id = ? "
                "AND rc.study_id = ? AND rc.reader_id = ? LIMIT 1", (image_id, study_id, study_id, reader.id)).fetchone()
        if row is None:
            raise StudyNotFound("no such image in this reader's cases")
        if sha256(row["png"]) != row["sha256"]:
            raise StudyDamaged(f"study image {image_id} is damaged (sha256 mismatch): restore the study database")
        return bytes(row["png"])

    # ---- answers ---------------------------------------------------------------------------------------------
    def answer(self, study_id: str, reader: Reader, case_id: str, choice: str, likert: Sequence[dict],
               idempotency_key: str) -> dict:
        """Store one answer in one transaction. A key seen before (``answer_log`` keeps every accepted one, so a
        revision does not forget it) returns the first result (``replayed``) and stores nothing — or 409 when the
        body differs; re-sending the stored answer is a no-op; a different answer to an answered case is refused
        unless the study allows revising; only the current case (or, when revising, an answered one) can be
        answered."""
        if not _IDEMPOTENCY_RE.match(idempotency_key or ""):
            raise StudyError("idempotency_key must be 8-100 characters of A-Z a-z 0-9 _ -")
        with self.db.write() as conn:
            rc = conn.execute("SELECT position FROM reader_cases WHERE study_id = ? AND reader_id = ? AND case_id = ?",
                              (study_id, reader.id, case_id)).fetchone()
            if rc is None:
                raise StudyNotFound(f"no case {case_id[:40]!r} among this reader's cases")
            case = conn.execute("SELECT kind, likert FROM cases WHERE id = ?", (case_id,)).fetchone()
            ratings = self._check_answer(case["kind"], json.loads(case["likert"]), choice, likert)
            prior = conn.execute("SELECT case_id, choice, likert FROM answer_log WHERE study_id = ? AND reader_id = ? "
                                 "AND idempotency_key = ?", (study_id, reader.id, idempotency_key)).fetchone()
            if prior is not None:
                if prior["case_id"] != case_id:
                    raise StudyConflict("this idempotency key was used for another case: make a new key per case")
                if (prior["choice"], prior["likert"]) != (choice, dumps(ratings)):
                    raise StudyConflict("this idempotency key was used for a different answer: make a new key for "
                                        "a new answer")
                return self._ack(conn, study_id, reader, replayed=True)
            existing = conn.execute("SELECT choice, likert, revision FROM answers WHERE study_id = ? AND reader_id = ? "
                                    "AND case_id = ?", (study_id, reader.id, case_id)).fetchone()
            if existing is not None and (existing["choice"], existing["likert"]) == (choice, dumps(ratings)):
                return self._ack(conn, study_id, reader, replayed=True)  # the stored answer again: nothing changes
            now = _now()
            if existing is not None:
                if not conn.execute("SELECT allow_revise FROM studies WHERE id = ?", (study_id,)).fetchone()[0]:
                    raise StudyConflict("this case is answered already and the study does not allow changing answers")
                revision = existing["revision"] + 1
                conn.execute("UPDATE answers SET choice = ?, likert = ?, idempotency_key = ?, answered_at = ?, "
                             "revision = ? WHERE study_id = ? AND reader_id = ? AND case_id = ?",
                             (choice, dumps(ratings), idempotency_key, now, revision, study_id, reader.id, case_id))
            else:
                answered, _ = self._answered(conn, study_id, reader.id)
                if rc["position"] != answered:
                    raise StudyConflict(f"case {rc['position'] + 1} is not the current one ({answered + 1})")
                revision = 0
                conn.execute("INSERT INTO answers VALUES (?,?,?,?,?,?,?,?)",
                             (study_id, reader.id, case_id, choice, dumps(ratings), idempotency_key, now, revision))
            conn.execute("INSERT INTO answer_log (study_id, reader_id, case_id, choice, likert, idempotency_key, "
                         "answered_at, revision) VALUES (?,?,?,?,?,?,?,?)",
                         (study_id, reader.id, case_id, choice, dumps(ratings), idempotency_key, now, revision))
            return self._ack(conn, study_id, reader, replayed=False)

    def _ack(self, conn, study_id: str, reader: Reader, replayed: bool) -> dict:
        answered, total = self._answered(conn, study_id, reader.id)
        return {"answered": answered, "total": total, "done": answered >= total, "replayed": replayed}

    @staticmethod
    def _check_answer(kind: str, questions: list[dict], choice: str, likert: Sequence[dict]) -> list[dict]:
        if choice not in CHOICES[kind]:
            raise StudyError(f"choice {str(choice)[:40]!r} is not an answer to a {kind} case: use one of "
                             + ", ".join(CHOICES[kind]))
        asked = {(q["slot"], q["finding"]) for q in questions}
        given: dict[tuple[str, str], int] = {}
        for item in likert or ():
            key = (str(item.get("slot")), str(item.get("finding")))
            if key not in asked:
                raise StudyError(f"no Likert question for slot {key[0][:20]!r} and finding {key[1][:40]!r} in this case")
            rating = item.get("rating")
            if not isinstance(rating, int) or isinstance(rating, bool) or rating not in LIKERT_LEVELS:
                raise StudyError(f"Likert rating {str(rating)[:20]!r} must be an integer 1-5")
            if key in given:
                raise StudyError(f"Likert question {key[0]}/{key[1]} answered twice")
            given[key] = rating
        missing = sorted(asked - set(given))
        if missing:
            raise StudyError("answer every Likert question; missing: " + ", ".join(f"{s}/{f}" for s, f in missing))
        return [{"slot": s, "finding": f, "rating": given[(s, f)]} for s, f in sorted(given)]

    # ---- owner: answer rows, results, export --------------------------------------------------------------------
    def answer_rows(self, study_id: str) -> list[AnswerRow]:
        """Every answer joined with its case's truth (the answer key): the input of the statistics."""
        self.info(study_id)
        with self.db.read() as conn:
            self._verify_design(conn, study_id)
            images = {(r["case_id"], r["slot"]): r for r in conn.execute(
                "SELECT ci.case_id, ci.slot, i.source, i.model_id FROM case_images ci JOIN images i ON i.id = ci.image_id "
                "JOIN cases c ON c.id = ci.case_id WHERE c.study_id = ?", (study_id,))}
            rows = conn.execute(
                "SELECT a.reader_id, a.case_id, a.choice, a.likert, a.answered_at, c.kind, c.truth, c.source, c.strata, "
                "c.likert AS questions FROM answers a JOIN cases c ON c.id = a.case_id JOIN reader_cases rc ON "
                "rc.study_id = a.study_id AND rc.reader_id = a.reader_id AND rc.case_id = a.case_id "
                "WHERE a.study_id = ? ORDER BY a.reader_id, rc.position", (study_id,)).fetchall()
        out = []
        for r in rows:
            states = {(q["slot"], q["finding"]): q["state"] for q in json.loads(r["questions"])}
            likert = tuple(LikertRow(x["slot"], images[(r["case_id"], x["slot"])]["source"],
                                     images[(r["case_id"], x["slot"])]["model_id"], x["finding"],
                                     states[(x["slot"], x["finding"])], x["rating"]) for x in json.loads(r["likert"]))
            out.append(AnswerRow(r["reader_id"], r["case_id"], r["kind"], r["choice"], r["truth"], r["source"],
                                 tuple(tuple(s) for s in json.loads(r["strata"])), likert, r["answered_at"]))
        return out

    def results(self, study_id: str):
        from .stats import compute_results

        info = self.info(study_id)
        return compute_results(self.answer_rows(study_id), study_id=study_id, title=info.title, readers=info.readers)

    def report(self, study_id: str) -> str:
        from .report import render_report

        return render_report(self.results(study_id), self.info(study_id), self.progress(study_id))

    def export(self, study_id: str, fmt: str = "csv") -> bytes:
        """Every answer with its truth and image origins (the owner's data): CSV (one row per answer) or JSON
        (the study, its cases with their answer key, readers without tokens, answers)."""
        if fmt not in ("csv", "json"):
            raise StudyError(f"export format {str(fmt)[:20]!r}: use csv or json")
        info = self.info(study_id)
        names = {r.id: r.name for r in info.readers}
        with self.db.read() as conn:
            self._verify_design(conn, study_id)
            cases = {r["id"]: dict(r) for r in conn.execute(
                "SELECT id, ordinal, kind, truth, source, strata, likert FROM cases WHERE study_id = ? ORDER BY ordinal",
                (study_id,))}
            origins: dict[str, dict[str, dict]] = {}
            for r in conn.execute("SELECT ci.case_id, ci.slot, i.id, i.source, i.model_id, i.model_hash, i.origin, "
                                  "i.seed, i.condition, i.sha256 FROM case_images ci JOIN images i ON i.id = ci.image_id "
                                  "WHERE i.study_id = ?", (study_id,)):
                origins.setdefault(r["case_id"], {})[r["slot"]] = {
                    "image_id": r["id"], "source": r["source"], "model_id": r["model_id"],
                    "model_hash": r["model_hash"], "origin": r["origin"], "seed": r["seed"],
                    "condition": json.loads(r["condition"]), "sha256": r["sha256"]}
            answers = [dict(r) for r in conn.execute(
                "SELECT a.reader_id, rc.position, a.case_id, a.choice, a.likert, a.answered_at, a.revision FROM answers a "
                "JOIN reader_cases rc ON rc.study_id = a.study_id AND rc.reader_id = a.reader_id AND "
                "rc.case_id = a.case_id WHERE a.study_id = ? ORDER BY a.reader_id, rc.position", (study_id,))]
        if fmt == "json":
            doc = {"study": asdict(info), "cases": [
                {**{k: v for k, v in c.items() if k not in ("strata", "likert")}, "strata": json.loads(c["strata"]),
                 "likert": json.loads(c["likert"]), "images": origins.get(c["id"], {})} for c in cases.values()],
                "answers": [{**a, "reader_name": names.get(a["reader_id"]), "likert": json.loads(a["likert"]),
                             "truth": cases[a["case_id"]]["truth"],
                             "correct": a["choice"] == cases[a["case_id"]]["truth"]} for a in answers]}
            return json.dumps(doc, indent=1).encode()
        buf = io.StringIO()
        w = _SafeCsv(csv.writer(buf, lineterminator="\n"))
        w.writerow(["study_id", "reader_id", "reader_name", "position", "case_id", "kind", "choice", "truth", "correct",
                    "source", "strata", "likert", "answered_at", "revision", "images"])
        for a in answers:
            c = cases[a["case_id"]]
            imgs = "; ".join(f"{slot}={o['source']}:{o['origin']}" for slot, o in sorted(origins[c["id"]].items()))
            w.writerow([study_id, a["reader_id"], names.get(a["reader_id"], ""), a["position"], a["case_id"], c["kind"],
                        a["choice"], c["truth"], int(a["choice"] == c["truth"]), c["source"],
                        " ".join(f"{f}:{s}" for f, s in json.loads(c["strata"])), a["likert"], a["answered_at"],
                        a["revision"], imgs])
        return buf.getvalue().encode()





class _SafeCsv:
    """A csv writer whose text cells cannot start a spreadsheet formula (=, +, -, @, tab, CR: prefixed with ')."""

    def __init__(self, writer):
        self.writer = writer

    def writerow(self, row) -> None:
        self.writer.writerow(["'" + c if isinstance(c, str) and c[:1] in ("=", "+", "-", "@", "\t", "\r") else c
                              for c in row])


def create_study(plan: StudyPlan, db: StudyDB | str, store_url: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Created:
    """``synthrad study create``: read the batches and the real folder, plan the cases, store the study."""
    from .design import load_real, load_synthetic, plan_cases

    synthetic = load_synthetic(plan.batches, store_url)
    real = load_real(plan.real_path, plan.real_layout, plan.real_name, plan.real_views, plan.real_split)
    return StudyService(db).create(plan, plan_cases(plan, synthetic, real), progress)
__all__ = ["Created", "StudyService", "create_study", "study_of_token"]

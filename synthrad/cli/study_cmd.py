"""``synthrad study``: reader studies — create one from stored batches and a labelled real folder, serve the
reading page, add readers, read the results (UAR, CAR, accuracy, TPR, TNR, FIR, kappa, Likert)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from services.common.atomic import write_atomic

_DB = click.option("--db", type=click.Path(dir_okay=False), default=None,
                   help="Study database (default: SYNTHRAD_STUDIES__DB or HOME/studies.sqlite3).")


def _db(db: str | None) -> Path:
    from services.common.config import get_settings

    return Path(db).expanduser() if db else get_settings().resolved_studies_db


def _base_url(url: str | None) -> str:
    from services.common.config import get_settings

    if url:
        return url.rstrip("/")
    s = get_settings().serve
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
    return f"http://{host}:{s.http_port or 8000}"


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


@click.group("study", context_settings={"help_option_names": ["-h", "--help"]})
def command() -> None:
    """Reader studies: radiologists tell real from synthetic in the browser.

    \b
    1. synthrad study create --batch ID --batch ID --real ../shared/data/nih-chestxray14-64 \\
           --reader ann --reader bob --mode pair --mode single --likert --id pilot
       (prints the owner key and one sign-in link per reader: shown once)
    2. synthrad serve                 # the gateway serves /study/ (or: synthrad study serve, no models)
    3. readers open their link; the owner opens /study/owner with the owner key
    4. synthrad study results pilot --report pilot.html
    Definitions of the measures and a worked example: docs/studies.md.
    """


@command.command("create")
@click.option("--batch", "batches", multiple=True, required=True, help="A stored batch id (repeat; any models).")
@click.option("--real", "real", required=True, type=click.Path(file_okay=False),
              help="Labelled real image folder (NIH labels.csv, Kermany NORMAL/PNEUMONIA, CheXpert, MIMIC, folder) "
                   "or the name of a configured dataset (SYNTHRAD_DATASETS).")
@click.option("--layout", default="auto", show_default=True, help="nih | chexpert | mimic | folder | auto")
@click.option("--views", default="PA", show_default=True,
              help="Views real images may have, comma-separated, or 'all' (a dataset that records no views keeps "
                   "every image). Match the views the generator was trained on: an AP or lateral film beside a "
                   "PA-like synthetic one is a clue.")
@click.option("--split", "real_split", default=None, help="Only real images of this split (train / valid / test), "
                                                          "e.g. held-out images the generator never saw.")
@click.option("--id", "study_id", default=None, help="Study id (1-40 of a-z 0-9 -; default: generated).")
@click.option("--title", default="Real or synthetic?", show_default=True)
@click.option("--instructions", default=None, help="Text shown to readers (default: explains each mode).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["pair", "single"]), default=("pair",),
              show_default=True, help="pair: real + synthetic side by side; single: one image, real or synthetic "
                                      "(fake-identification rate). Repeat for both (disjoint images).")
@click.option("--per-batch", type=int, default=10, show_default=True, help="Synthetic images of each batch per mode.")
@click.option("--likert", is_flag=True, help="Ask 'Is <finding> present?' 1-5 for every image.")
@click.option("--allow-revise", is_flag=True, help="Readers may go back and change answers.")
@click.option("--reader", "readers", multiple=True, help="A reader's name (repeat). Default: one 'reader-1'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds pairing, sides and every reader's order.")
@click.option("--image-size", type=int, default=None, help="Shown size in px (default: largest synthetic image).")
@click.option("--url", default=None, help="Server base URL for the printed links (default: from serve settings).")
@click.option("--store", "store_url", default=None, help="Batch store (default: the settings' store).")
@click.option("--secrets-out", type=click.Path(dir_okay=False), default=None,
              help="Also write the owner key and reader tokens to this file (JSON, mode 600).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_DB
def create(batches, real, layout, views, real_split, study_id, title, instructions, modes, per_batch, likert, allow_revise, readers, seed,
           image_size, url, store_url, secrets_out, quiet, db):
    """Build a study: pairs matched by finding and state, de-identified images, seeded order per reader."""
    from pydantic import ValidationError
    from tqdm import tqdm

    from services.common.config import get_settings
    from services.common.store import StoreError
    from services.studies.design import StudyPlan
    from services.studies.errors import StudyError
    from services.studies.service import create_study

    layout_name, real_path = layout, real
    configured = get_settings().datasets.get(real)
    if configured is not None and not Path(real).exists():
        real_path, layout_name = str(configured.path), configured.layout
    try:
        plan = StudyPlan(study_id=study_id, title=title, instructions=instructions, batches=list(batches),
                         real_path=real_path, real_layout=layout_name, real_name=real if configured else None,
                         real_views=None if views.strip().lower() == "all" else
                         [v.strip() for v in views.split(",") if v.strip()], real_split=real_split,
                         modes=list(modes), per_batch=per_batch, likert=likert, allow_revise=allow_revise,
                         readers=list(readers) or ["reader-1"], seed=seed, image_size=image_size)
    except ValidationError as e:
        _fail(ValueError("; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())))
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc="storing cases", unit="case", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        made = create_study(plan, _db(db), store_url=store_url, progress=progress)
    except (StudyError, StoreError, KeyError) as e:
        _fail(e)
    finally:
        if bar is not None:
            bar.close()
    info, base = made.info, _base_url(url)
    for w in made.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"study {info.id}: {info.n_cases} cases ({', '.join(info.modes)}), images {info.image_size} px, "
               f"{len(info.readers)} reader(s), seed {info.seed}, design sha256 {made.design_sha256[:16]}…")
    click.echo(f"database  {_db(db)}")
    click.echo(f"owner key {made.owner_key}   (results: {base}/study/owner#key=… or `synthrad study results {info.id}`)")
    for name, token in made.reader_tokens.items():
        click.echo(f"reader {name}: {base}/study/#token={token}")
    click.echo("The key and the tokens are shown once (only their digests are stored). "
               "Serve with `synthrad serve` (or `synthrad study serve`).")
    if secrets_out:
        doc = {"study_id": info.id, "owner_key": made.owner_key, "readers": made.reader_tokens,
               "urls": {n: f"{base}/study/#token={t}" for n, t in made.reader_tokens.items()}}
        write_atomic(Path(secrets_out), json.dumps(doc, indent=1).encode(), mode=0o600)


@command.command("list")
@_DB
def list_(db):
    """The studies in the database with each reader's progress."""
    from services.studies.service import StudyService

    svc = StudyService(_db(db))
    studies = svc.list_studies()
    if not studies:
        click.echo(f"no studies in {_db(db)}")
    for s in studies:
        prog = ", ".join(f"{p['name']} {p['answered']}/{p['total']}" for p in svc.progress(s.id))
        click.echo(f"{s.id}  {s.title!r}  {s.n_cases} cases  created {s.created}  readers: {prog}")


@command.command("results")
@click.argument("study_id")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the results JSON ('-': stdout).")
@click.option("--report", "report_out", type=click.Path(dir_okay=False), default=None, help="Write the HTML report here.")
@_DB
def results(study_id, json_out, report_out, db):
    """UAR, CAR, accuracy, TPR, TNR (and FIR) with 95 % CIs per reader, finding, state and source; kappa; Likert."""
    from services.studies.errors import StudyError
    from services.studies.report import render_report, write_report
    from services.studies.service import StudyService

    svc = StudyService(_db(db))
    try:
        res = svc.results(study_id)
        info = svc.info(study_id)
    except StudyError as e:
        _fail(e)
    if json_out == "-":
        click.echo(json.dumps(res.model_dump(mode="json"), indent=1))
        return
    click.echo(f"{info.title} ({study_id}): {res.n_answers} answers from {res.n_readers} reader(s); design sha256 "
               f"{info.design_sha256[:16]}… (checked)")
    for kind in res.kinds:
        click.echo(f"\n{kind.kind} cases")
        click.echo(f"  {'group':<34} {'n':>4}  {'UAR':>16}  {'CAR':>16}  {'accuracy':>16}  {'TPR':>16}  {'TNR':>16}"
                   + ("  FIR" if kind.kind == "single" else ""))
        for g in kind.groups:
            r = g.rates
            cells = [_est(r.uar), _est(r.car), _est(r.accuracy), _est(r.tpr), _est(r.tnr)]
            if kind.kind == "single":
                cells.append(_est(r.fir))
            click.echo(f"  {(g.by + ' ' + g.label)[:34]:<34} {r.n:>4}  " + "  ".join(f"{c:>16}" for c in cells))
    if res.agreement:
        click.echo("\nagreement")
        for k in res.agreement:
            val = "n/a" if k.kappa is None else f"{k.kappa:.3f}"
            click.echo(f"  {k.kind:<6} {k.method:<6} {', '.join(k.readers):<30} kappa {val} over {k.n_cases} cases")
    if res.likert:
        click.echo("\nLikert 'Is <finding> present?' (1-5)")
        for s in res.likert:
            mean = "n/a" if s.mean is None else f"{s.mean:.2f}"
            click.echo(f"  {s.finding} {s.state:<8} {s.source:<20} n {s.n:>3}  mean {mean}  consistent {_est(s.consistent)}")
    if json_out:
        write_atomic(Path(json_out), json.dumps(res.model_dump(mode="json"), indent=1).encode())
        click.echo(f"\nresults JSON: {json_out}")
    if report_out:
        write_report(report_out, render_report(res, info, svc.progress(study_id)))
        click.echo(f"report: {report_out}")


def _est(e) -> str:
    if e is None or e.value is None:
        return "n/a"
    return f"{e.value:.2f} [{e.low:.2f},{e.high:.2f}]"


@command.command("export")
@click.argument("study_id")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="-", show_default=True, help="File ('-': stdout).")
@_DB
def export(study_id, fmt, out, db):
    """Every answer with its truth and the images' origins (the answer key: the owner's data)."""
    from services.studies.errors import StudyError
    from services.studies.service import StudyService

    try:
        data = StudyService(_db(db)).export(study_id, fmt)
    except StudyError as e:
        _fail(e)
    if out == "-":
        sys.stdout.write(data.decode())
    else:
        write_atomic(Path(out), data)
        click.echo(f"wrote {out}")


@command.command("add-reader")
@click.argument("study_id")
@click.argument("name")
@click.option("--url", default=None, help="Server base URL for the printed link.")
@_DB
def add_reader(study_id, name, url, db):
    """Add a reader (prints the reader's sign-in link; shown once)."""
    from services.studies.errors import StudyError
    from services.studies.service import StudyService

    try:
        rdr, token = StudyService(_db(db)).add_reader(study_id, name)
    except StudyError as e:
        _fail(e)
    click.echo(f"reader {rdr.name} ({rdr.id}): {_base_url(url)}/study/#token={token}")


@command.command("serve")
@click.option("--host", default=None, help="Bind address (default: serve.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: serve.http_port, 8000).")
@_DB
def serve(host, port, db):
    """Serve only the reading pages and /v1/studies (a reading workstation: no Ray, no models)."""
    import uvicorn

    from services.common.config import get_settings
    from services.gateway.studies_app import create_study_app

    settings = get_settings()
    host = host or settings.serve.host
    port = port if port is not None else (settings.serve.http_port or 8000)
    app = create_study_app(settings, _db(db))
    click.echo(f"reader studies on http://{host}:{port}/study/  (owner page /study/owner; database {_db(db)})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["command"]

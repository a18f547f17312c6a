"""``synthrad evaluate KIND``: is this batch worth training on? (utility, conditioning, memorisation, bias,
per-finding; ``efficiency`` of a model). One sub-command per registered evaluation kind, its flags made from the
kind's options model (``services/metrics/evaluation/<kind>.py``: one place for names, types, defaults, help)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import click

#: sub-commands besides the evaluation kinds
EXTRA = {"efficiency": "Peak memory for 8 images and time per 1000 images, per backend and device.",
         "kinds": "List the evaluation kinds and their options."}
_SUMMARIES = {  # `synthrad evaluate --help` must not import the kinds (torch)
    "conditioning": "Does each image show the finding it was asked for? (independent classifier)",
    "utility": "Augmentation, train-on-synthetic-test-on-real and feature-extraction utility (seeds, Wilcoxon).",
    "memorisation": "Nearest training images, calibrated near-copy flags, authenticity, C_T.",
    "bias": "Burned-in markers and text in synthetic vs real images.",
    "per-finding": "FID / KID / precision / recall per finding and state.",
}


class EvaluateGroup(click.Group):
    def list_commands(self, ctx):
        from services.metrics.evaluation.registry import BUILTIN

        return list(BUILTIN) + list(EXTRA)

    def get_command(self, ctx, name):
        if name == "efficiency":
            from synthrad.cli.evaluate_efficiency import command as eff

            return eff
        if name == "kinds":
            return kinds_cmd
        from services.metrics.errors import MetricsError
        from services.metrics.evaluation.registry import get_evaluation

        try:
            ev = get_evaluation(name)
        except MetricsError:
            return None
        return _kind_command(ev)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(k, v) for k, v in {**_SUMMARIES, **EXTRA}.items()])


@click.group(name="evaluate", cls=EvaluateGroup)
def command() -> None:
    """Evaluate synthetic images beyond FID: do they help a classifier, show the requested finding, copy training
    patients, carry burned-in markers, and what do they cost to make?

    \b
    Examples:
      synthrad evaluate conditioning --model stylegan2-cxr64 --n 50
      synthrad evaluate utility --model stylegan2-kermany128 --data ../shared/data/kermany-pneumonia-224
      synthrad evaluate memorisation --batch 20261201t120000-0123456789ab --batch ...
      synthrad evaluate efficiency --model stylegan2-cxr64
    Results: a table on stdout, --json FILE (the full result), --report FILE.html (tables + plots).
    """


@click.command(name="kinds")
def kinds_cmd() -> None:
    """List the evaluation kinds and their options (as JSON schema)."""
    from services.metrics.evaluation.registry import evaluation_kinds, get_evaluation

    for kind in evaluation_kinds():
        ev = get_evaluation(kind)
        click.echo(f"{kind}: {ev.summary}{' (needs --data)' if ev.needs_data else ''}")
        for name, f in ev.options.model_fields.items():
            if name != "data":
                click.echo(f"  --{name.replace('_', '-')}: {f.description or ''} (default {f.default!r})")


# ---- flags from an options model ---------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base(ann):
    """(inner type, is_list, choices) of a field annotation."""
    origin = typing.get_origin(ann)
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _base(args[0])
    if origin is typing.Literal:
        return str, False, [str(a) for a in typing.get_args(ann)]
    if origin in (list, tuple, typing.Sequence):
        inner = args[0] if args else str
        return _base(inner)[0], True, None
    return ann, False, None


def _option_params(model) -> list[click.Parameter]:
    params: list[click.Parameter] = []
    for name, f in model.model_fields.items():
        if name == "data":
            continue
        typ, is_list, choices = _base(f.annotation)
        default = f.default if f.default is not None and not callable(f.default) else None
        if f.default_factory is not None:
            default = f.default_factory()
        help_ = (f.description or "") + (f" [default: {default!r}]" if default not in (None, [], "") else "")
        if typ is bool and not is_list:
            params.append(click.Option([f"{_flag(name)}/--no-{name.replace('_', '-')}", name], default=None,
                                       help=help_))
        elif is_list:
            params.append(click.Option([_flag(name), name], default=None, metavar="A,B,...", help=help_))
        elif choices:
            params.append(click.Option([_flag(name), name], type=click.Choice(choices), default=None, help=help_))
        elif typ in (int, float, str):
            params.append(click.Option([_flag(name), name], type=typ, default=None, help=help_))
        else:
            params.append(click.Option([_flag(name), name], default=None, metavar="JSON", help=help_ + " (JSON)"))
    return params


def _collect(model, values: dict) -> dict:
    out: dict = {}
    for name, f in model.model_fields.items():
        v = values.get(name)
        if name == "data" or v is None:
            continue
        typ, is_list, choices = _base(f.annotation)
        if is_list:
            out[name] = [typ(x.strip()) if typ in (int, float) else x.strip() for x in str(v).split(",") if x.strip()]
        elif typ not in (int, float, str, bool) and not choices:
            try:
                out[name] = json.loads(v)
            except ValueError as e:
                raise click.BadParameter(f"not JSON: {e}", param_hint=_flag(name)) from None
        else:
            out[name] = v
    return out


_COMMON = [
    click.Option(["--batch", "batches"], multiple=True, metavar="ID", help="A stored batch (repeat: one model, "
                 "one batch per condition)."),
    click.Option(["--model"], default=None, help="Generate a fresh evaluation set from this model first (stored as "
                 "marked batches; their ids are printed for reuse with --batch)."),
    click.Option(["--n"], type=click.IntRange(2, 5000), default=50, show_default=True,
                 help="With --model: images per condition group (NIH models: present and absent per finding; "
                      "Kermany models: normal and pneumonia)."),
    click.Option(["--first-seed"], type=int, default=100_000, show_default=True,
                 help="With --model: seed of the first image (groups follow on)."),
    click.Option(["--backend"], default=None, help="With --model: generator backend (default: settings)."),
    click.Option(["--store"], default=None, help="Batch store (folder or URL; default: SYNTHRAD_STORE_URL)."),
    click.Option(["--data"], default=None, type=click.Path(exists=True, file_okay=False),
                 help="Labelled real dataset folder (NIH labels.csv, Kermany NORMAL/ PNEUMONIA/, ...)."),
    click.Option(["--layout"], default="auto", show_default=True, help="nih | folder | chexpert | mimic | auto"),
    click.Option(["--views"], default=None, help="Kept views, e.g. PA,AP (default: all)."),
    click.Option(["--split-by"], type=click.Choice(["patient", "recorded"]), default="patient", show_default=True,
                 help="patient: train / test by a hash of the patient id; recorded: the dataset's own split."),
    click.Option(["--json", "json_out"], default=None, type=click.Path(dir_okay=False),
                 help="Write the full result (JSON) here."),
    click.Option(["--report"], default=None, type=click.Path(dir_okay=False),
                 help="Write a self-contained HTML report (tables + plots) here."),
    click.Option(["--progress/--no-progress"], default=True, help="Show a progress bar on stderr."),
]
_COMMON_NAMES = {"batches", "model", "n", "first_seed", "backend", "store", "data", "layout", "views", "split_by",
                 "json_out", "report", "progress"}


def _kind_command(ev) -> click.Command:
    taken = {o for p in _COMMON for o in p.opts}
    own = []
    for p in _option_params(ev.options):
        if p.name in _COMMON_NAMES:
            continue  # e.g. a kind's own "seed": its default stands (the common flag means something else)
        if set(p.opts) & taken:  # a flag the common ones use (utility's training "batch" vs --batch ID)
            flag = f"--{ev.kind}-{p.name.replace('_', '-')}"
            p = click.Option([flag, p.name], type=p.type, default=None, help=p.help, metavar=p.metavar)
        own.append(p)

    def callback(**kw):
        _run(ev, kw)

    help_ = ev.summary + ("\n\nNeeds --data (a labelled real dataset)." if ev.needs_data else "")
    return click.Command(ev.kind, params=_COMMON + own, callback=callback, help=help_)


def recipe(model_id: str) -> list:
    """The condition groups an evaluation set of ``model_id`` is generated in: Kermany-trained models (class
    folders): normal and pneumonia; others: each finding present and absent (the rest unspecified)."""
    from services.common.findings import FINDINGS, Condition
    from services.generator import registry

    path = registry.descriptor_file(registry.canonical_model_id(model_id))
    training = json.loads(Path(path).read_text()).get("training", {}) if path else {}
    if training.get("layout") == "folder":
        return [Condition.no_finding(), Condition.from_findings(present=["lung_opacity"])]
    return [c for f in FINDINGS for c in (Condition.from_findings(present=[f]), Condition.from_findings(absent=[f]))]


def generate_set(model_id: str, n: int, seed: int, backend: str | None, store_url: str | None,
                 progress: bool) -> list[str]:
    """Generate ``n`` images per recipe group into the store; returns the batch ids (one per group)."""
    from services.common.config import get_settings, resolve_device
    from services.common.store import BatchStore
    from services.generator import registry
    from services.generator.generation import GenerationRequest
    from synthrad.cli.generate_cmd import _run as run_generation

    settings = get_settings()
    gen = registry.load_generator(registry.model_or_family(model_id), backend or settings.backend,
                                  resolve_device(settings.device))
    store = BatchStore(store_url or settings.resolved_store_url)
    ids = []
    for i, cond in enumerate(recipe(gen.model_id)):
        req = GenerationRequest(model=gen.model_id, condition=cond, count=n, seed=seed + i * n)
        manifest, _ = run_generation(gen, req, store, "png", max(n, settings.limits.max_batch_images))
        ids.append(manifest.batch_id)
        if progress:
            click.echo(f"  {cond.describe()}: batch {manifest.batch_id}", err=True)
    return ids


def _run(ev, kw: dict) -> None:
    from services.common.findings import ConditionError
    from services.generator.base import GeneratorError
    from services.metrics.errors import MetricsError
    from services.metrics.evaluation import evaluate
    from services.metrics.evaluation.progress import tqdm_progress
    from services.metrics.evaluation.report import write_html

    if bool(kw["batches"]) == bool(kw["model"]):
        raise click.UsageError("give --batch ID (repeatable) or --model MODEL")
    options = _collect(ev.options, kw)
    if "data" in ev.options.model_fields and kw["data"]:
        options["data"] = {"path": str(kw["data"]), "layout": kw["layout"], "split_by": kw["split_by"],
                           "views": [v.strip() for v in kw["views"].split(",")] if kw["views"] else None}
    elif ev.needs_data:
        raise click.UsageError(f"'{ev.kind}' needs --data (a labelled real dataset folder)")
    try:
        if kw["model"]:
            click.echo(f"generating the evaluation set of {kw['model']} ({kw['n']} images per group)", err=True)
            batches = generate_set(kw["model"], kw["n"], kw["first_seed"], kw["backend"], kw["store"], kw["progress"])
        else:
            batches = list(kw["batches"])
        with tqdm_progress(ev.kind, enabled=kw["progress"]) as bar:
            result = evaluate(ev.kind, batches, options, bar, store_url=kw["store"])
    except MetricsError as e:
        raise click.ClickException(str(e)) from None
    except (GeneratorError, ConditionError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.markdown())
    if kw["json_out"]:
        Path(kw["json_out"]).write_text(result.model_dump_json(indent=1))
        click.echo(f"result: {kw['json_out']}", err=True)
    if kw["report"]:
        click.echo(f"report: {write_html([result], kw['report'])}", err=True)

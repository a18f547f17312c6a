"""``synthrad generate``: generate marked synthetic images into a batch (images + manifest) under OUT."""

from __future__ import annotations

import click

from services.common.store import BATCH_FORMATS

SHA256_RE = r"^[0-9a-fA-F]{64}$"


def _check_sha256(ctx, param, value: str | None) -> str | None:
    import re

    if value is None:
        return None
    value = value.strip()
    if not re.match(SHA256_RE, value):
        raise click.BadParameter(f"expected 64 hex digits (a sha256), got {value!r}")
    return value.lower()


def load_model_path(path: str, sha256: str | None, model_id: str | None, backend: str, device: str):
    """Load a local Stable-Diffusion-format diffusers folder (``--model-path``); never touches the hub.

    The folder's sha256 (``registry.weights_hash``) is computed first: with ``sha256`` given, a different
    folder is refused before anything is loaded; without it, the hash is printed with how to pin it.
    """
    from pathlib import Path

    from services.generator.models.latent_diffusion import load_path, verify_folder

    folder = Path(path).expanduser().resolve()
    actual = verify_folder(folder, None)
    if sha256 and actual != sha256:
        raise click.ClickException(
            f"model folder {folder} has sha256 {actual}, but --model-sha256 expects {sha256}; refusing to load "
            "a checkpoint that is corrupt, partially copied or not the one you pinned"
        )
    if not sha256:
        click.echo(f"model folder {folder} sha256: {actual}\n"
                   f"  pin it with --model-sha256 {actual} (or register it once: "
                   f"synthrad models register {folder} --model-id ID)", err=True)
    return load_path(folder, backend, device, sha256=actual, model_id=model_id or folder.name)


def _check_device(ctx, param, value: str | None) -> str | None:
    """``--device`` syntax (whether the GPU exists is checked when the command runs)."""
    from services.common.config import device_spec

    if value is None:
        return None
    try:
        return device_spec(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _validation_message(e) -> str:
    """The user's own words for the first error of a pydantic ``ValidationError`` raised from a validator
    (``ConditionError`` / ``ValueError`` text), without pydantic's dump."""
    err = e.errors()[0]
    inner = (err.get("ctx") or {}).get("error")
    return str(inner) if isinstance(inner, Exception) else err["msg"]


def parse_condition(condition: str | None):
    """``--condition`` (findings text or a JSON object) -> Condition (``--prompt`` is planned with the request).

    Raises ``ConditionError`` with a message that names the problem (bad JSON, unknown finding, bad state).
    """
    import json

    from pydantic import ValidationError

    from services.common.findings import Condition, ConditionError
    from services.common.prompts import parse_prompt

    if not condition:
        return Condition()
    if condition.strip().startswith("{"):
        try:
            data = json.loads(condition)
        except json.JSONDecodeError as e:
            raise ConditionError(
                f"not a valid JSON object ({e}); give JSON such as '{{\"pleural_effusion\": \"present\"}}' "
                "or findings text such as \"pleural effusion, no cardiomegaly\""
            ) from None
        try:
            return Condition.model_validate(data)
        except ValidationError as e:
            raise ConditionError(_validation_message(e)) from None
    return parse_prompt(condition)


#: Generation params the CLI exposes, as options.
PARAM_OPTIONS = {"steps": "--steps", "sampler": "--sampler", "guidance": "--guidance", "truncation": "--truncation"}


def build_params(**kw):
    """``GenerationParams`` from the options; an invalid value is a usage error naming the option and the
    accepted range/choices (the bounds come from ``GenerationParams`` itself)."""
    from pydantic import ValidationError

    from services.generator.base import GenerationParams

    try:
        return GenerationParams(**kw)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        field = GenerationParams.model_fields.get(name)
        lo = next((m.ge for m in field.metadata if hasattr(m, "ge")), None) if field else None
        hi = next((m.le for m in field.metadata if hasattr(m, "le")), None) if field else None
        if err["type"] in ("greater_than_equal", "less_than_equal") and lo is not None and hi is not None:
            msg = f"must be between {lo} and {hi}, got {kw.get(name)}"
        elif err["type"] == "literal_error":
            msg = f"{kw.get(name)!r} is not one of {err['ctx']['expected'].replace(chr(39), '')}"
        else:
            msg = _validation_message(e)
        raise click.BadParameter(msg, param_hint=PARAM_OPTIONS.get(name, name)) from None


@click.command(name="generate")
@click.option("--model", default=None, help="Model id (see `synthrad models list`) or family; default: settings.")
@click.option("--model-path", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local Stable-Diffusion-format diffusers folder (e.g. RoentGen) instead of --model; never downloads.")
@click.option("--model-sha256", default=None, callback=_check_sha256,
              help="With --model-path: the folder's expected sha256; a different folder is refused.")
@click.option("--model-id", default=None, help="With --model-path: the id recorded in the batch (default: folder name).")
@click.option("--condition", default=None, help='Findings, e.g. "pleural effusion, no cardiomegaly" (or a JSON object).')
@click.option("--prompt", default=None,
              help="Free-text report: parsed into a condition; text-conditioned models get it raw in their text encoder.")
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True,
              help="Number of images in the batch (at most the settings limit limits.max_batch_images, "
                   "10000 unless SYNTHRAD_LIMITS__MAX_BATCH_IMAGES says otherwise).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="First seed; image i uses seed+i.")
@click.option("--out", default=None, help="Store folder or fsspec URL (default: settings store).")
@click.option("--format", "fmt", type=click.Choice(BATCH_FORMATS), default="png", show_default=True,
              help="Stored image format: png (8-bit), png16 (16-bit), dicom, npz (float32 arrays), "
                   "webdataset (PNG + JSON members in tar shards).")
@click.option("--backend", default=None, help="auto | eager | compile | onnx (default: settings).")
@click.option("--device", default=None, callback=_check_device, metavar="[auto|cpu|cuda|cuda:N]",
              help="Torch device: auto, cpu, cuda or cuda:N (default: settings).")
@click.option("--steps", type=int, default=None, help="Sampler steps, 1-1000 (diffusion models).")
@click.option("--sampler", default=None, help="ddpm | ddim | dpmpp (diffusion models).")
@click.option("--truncation", type=float, default=None, help="Truncation psi, 0-2 (StyleGAN2; 1 = none).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale, 0-50 (diffusion models).")
@click.option("--screen", type=click.Choice(("off", "flag", "drop")), default="off", show_default=True,
              help="Screen for near copies of the model's training set (its shipped training-set index): flag marks "
                   "them in the manifest, drop leaves them out (their seeds recorded).")
@click.option("--screen-space", "screen_spaces", multiple=True, type=click.Choice(("pixel", "cxr-encoder", "inception")),
              help="Feature space(s) of --screen (repeatable; default pixel). A near copy in any space counts.")
@click.option("--screen-quantile", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Near-copy threshold: this quantile of real held-out images' distances to the "
                                      "training set.")
@click.option("--screen-index", default=None, help="Training-set index to screen against (default: the model's).")
def command(model, model_path, model_sha256, model_id, condition, prompt, n, seed, out, fmt, backend, device, steps,
            sampler, truncation, guidance, screen, screen_spaces, screen_quantile, screen_index) -> None:
    """Generate N marked synthetic chest X-rays for one condition into a new batch; prints the batch path.

    \b
    Example:
      synthrad generate --model stylegan2-cxr64 --condition "pleural effusion, no cardiomegaly" \\
          --n 16 --seed 7 --out out/
      synthrad generate --model-path /models/roentgen --model-sha256 HEX \\
          --prompt "Large right pleural effusion" --n 4 --seed 3 --out out/
    The same model, seed, condition (or prompt), params and backend give the same pixels.
    """
    from services.common.config import get_settings, resolve_device
    from services.common.findings import Condition, ConditionError
    from services.common.store import BatchStore
    from services.generator import registry
    from services.generator.base import GeneratorError, UnusedParam
    from services.generator.generation import GenerationRequest

    settings = get_settings()
    if model_path and model:
        raise click.UsageError("give --model or --model-path, not both")
    if not model_path and (model_sha256 or model_id):
        raise click.UsageError("--model-sha256 and --model-id go with --model-path "
                               "(a registered model's descriptor pins its own hash)")
    if condition and prompt:
        raise click.UsageError("give --condition or --prompt, not both")
    max_n = settings.limits.max_batch_images
    if n > max_n:
        raise click.BadParameter(f"{n} images is more than one batch may hold ({max_n}, the limits.max_batch_images "
                                 "setting, env SYNTHRAD_LIMITS__MAX_BATCH_IMAGES); split it into several batches "
                                 "(--seed N continues where the previous batch ended)", param_hint="--n")
    try:
        cond = parse_condition(condition) if condition else None
    except ConditionError as e:
        raise click.BadParameter(str(e), param_hint="--condition") from None
    params = build_params(steps=steps, sampler=sampler, guidance=guidance, truncation=truncation)
    try:
        dev = resolve_device(device or settings.device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    try:
        if model_path:
            gen = load_model_path(model_path, model_sha256, model_id, backend or settings.backend, dev)
        else:
            gen = registry.load_generator(registry.model_or_family(model or settings.default_model),
                                          backend or settings.backend, dev)
        try:
            gen.check_params(params)
        except UnusedParam as e:
            takes = [o for p, o in PARAM_OPTIONS.items() if p in gen.uses_params]
            raise click.BadParameter(
                f"model {gen.model_id} ({gen.family}) does not use {PARAM_OPTIONS.get(e.param, e.param)}; "
                f"it takes {', '.join(takes) if takes else 'none of --steps/--sampler/--guidance/--truncation'}",
                param_hint=PARAM_OPTIONS.get(e.param, e.param)) from None
    except (ConditionError, GeneratorError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    request = GenerationRequest(model=gen.model_id, condition=cond, prompt=prompt, count=n, seed=seed, params=params,
                                screen=screen)
    store = BatchStore(out or settings.resolved_store_url)
    screeners = None
    if screen != "off":
        from services.metrics.evaluation.screening import screener_factory

        screeners = screener_factory(list(screen_spaces) or ["pixel"], screen_quantile, screen_index)
    manifest, plan = _run(gen, request, store, fmt, max_n, screeners)
    if plan.prompts is not None and plan.condition == Condition():
        click.echo(f"note: the findings parser cannot read this prompt; it went to {gen.model_id}'s text encoder "
                   "as written and the batch records the condition as unspecified", err=True)
    what = f"prompt {prompt!r}" if plan.prompts is not None else plan.condition.describe()
    click.echo(f"{manifest.count} images ({what}) from {gen.model_id} [{gen.backend}] -> "
               f"batch {manifest.batch_id}", err=True)
    if manifest.screening is not None:
        sc = manifest.screening
        verb = f"dropped {len(sc.dropped_seeds)}" if sc.action == "drop" else f"flagged {len(sc.flagged_seeds)}"
        click.echo(f"screening ({', '.join(sc.spaces)} against index {sc.index}): {verb} near cop"
                   f"{'y' if len(sc.flagged_seeds) == 1 else 'ies'} of {sc.screened} images", err=True)
    click.echo(store.batch_path(manifest.batch_id))


def _run(gen, request, store, fmt: str, max_n: int, screeners=None):
    """Plan, generate and store through the same use case the API serves (in process, with a progress bar)."""
    import asyncio

    from tqdm import tqdm

    from services.common.config import get_settings
    from services.generator.base import GeneratorError
    from services.generator.generation import GenerationService, InvalidPrompt, InvalidRequest, LocalGenerators
    from services.generator.replica import GeneratorReplica

    service = GenerationService(LocalGenerators({gen.model_id: GeneratorReplica(gen.model_id, generator=gen)}),
                                get_settings().limits, gen.model_id, window=1, screeners=screeners)

    async def go():
        plan = await service.plan(request, max_n, "one batch")
        writer = await service.open_batch(plan, store, fmt)
        with tqdm(total=plan.count, unit="img", desc="generating", leave=False, disable=None) as bar:
            def progress(done: int) -> None:
                bar.update(done - bar.n)

            return await service.store(plan, writer, progress=progress), plan

    try:
        return asyncio.run(go())
    except InvalidPrompt as e:
        raise click.BadParameter(str(e), param_hint="--prompt") from None
    except InvalidRequest as e:
        if request.screen != "off" and "screen" in str(e):
            raise click.BadParameter(str(e), param_hint="--screen") from None
        raise click.ClickException(str(e)) from e
    except GeneratorError as e:
        raise click.ClickException(str(e)) from e

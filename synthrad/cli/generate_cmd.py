"""``synthrad generate``: generate marked synthetic images into a batch (images + manifest) under OUT."""

from __future__ import annotations

import click

FORMATS = ("png", "png16", "dicom", "npz", "webdataset")


def resolve_model_id(model: str) -> str:
    """A model id, or a family name (``stylegan2``) meaning that family's default/first model."""
    from services.common.config import get_settings
    from services.generator import registry

    try:
        registry.resolve(model)
        return model
    except registry.UnknownModel:
        if model not in registry.FAMILIES:
            raise
    family = [m for m in registry.list_models() if m.family == model]
    models = [m for m in family if m.status == "ok"] or family  # a broken one only if nothing else: its error shows
    if not models:
        raise registry.UnknownModel(f"no model of family {model!r} is registered")
    default = get_settings().default_model
    return default if any(m.model_id == default for m in models) else models[0].model_id


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


DEVICE_RE = r"auto|cpu|cuda(?::\d+)?"
DEVICE_HELP = "auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:1)"


def _check_device(ctx, param, value: str | None) -> str | None:
    """``--device`` syntax (whether the GPU exists is checked when the command runs)."""
    import re

    if value is None:
        return None
    v = value.strip().lower()
    if not re.fullmatch(DEVICE_RE, v):
        raise click.BadParameter(f"{value!r} is not a device; use {DEVICE_HELP}")
    return v


def _validation_message(e) -> str:
    """The user's own words for the first error of a pydantic ``ValidationError`` raised from a validator
    (``ConditionError`` / ``ValueError`` text), without pydantic's dump."""
    err = e.errors()[0]
    inner = (err.get("ctx") or {}).get("error")
    return str(inner) if isinstance(inner, Exception) else err["msg"]


def parse_condition(condition: str | None, prompt: str | None):
    """``--condition`` (findings text or JSON object) / ``--prompt`` (free text) -> Condition.

    Raises ``ConditionError`` with a message that names the problem (bad JSON, unknown finding, bad state).
    """
    import json

    from pydantic import ValidationError

    from services.common.findings import Condition, ConditionError
    from services.common.prompts import parse_prompt

    if condition and prompt:
        raise click.UsageError("give --condition or --prompt, not both")
    if not condition and not prompt:
        return Condition()
    text = condition or prompt
    if condition and condition.strip().startswith("{"):
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
    return parse_prompt(text)


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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True,
              help="Stored image format: png (8-bit), png16 (16-bit), dicom, npz (float32 arrays), "
                   "webdataset (PNG + JSON members in tar shards).")
@click.option("--backend", default=None, help="auto | eager | compile | onnx (default: settings).")
@click.option("--device", default=None, callback=_check_device, metavar="[auto|cpu|cuda|cuda:N]",
              help="Torch device: auto, cpu, cuda or cuda:N (default: settings).")
@click.option("--steps", type=int, default=None, help="Sampler steps, 1-1000 (diffusion models).")
@click.option("--sampler", default=None, help="ddpm | ddim | dpmpp (diffusion models).")
@click.option("--truncation", type=float, default=None, help="Truncation psi, 0-2 (StyleGAN2; 1 = none).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale, 0-50 (diffusion models).")
@click.option("--chunk", type=int, default=64, show_default=True, hidden=True)
def command(model, model_path, model_sha256, model_id, condition, prompt, n, seed, out, fmt, backend, device, steps,
            sampler, truncation, guidance, chunk) -> None:
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
        cond, cond_error = parse_condition(condition, prompt), None
    except ConditionError as e:  # may still be fine: a text model reads the prompt itself
        if not prompt:
            raise click.BadParameter(str(e), param_hint="--condition") from None
        cond, cond_error = None, e
    params = build_params(steps=steps, sampler=sampler, guidance=guidance, truncation=truncation)
    try:
        dev = resolve_device(device or settings.device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    try:
        if model_path:
            gen = load_model_path(model_path, model_sha256, model_id, backend or settings.backend, dev)
        else:
            gen = registry.load_generator(resolve_model_id(model or settings.default_model),
                                          backend or settings.backend, dev)
        try:
            gen.check_params(params)
        except UnusedParam as e:
            takes = [o for p, o in PARAM_OPTIONS.items() if p in gen.uses_params]
            raise click.BadParameter(
                f"model {gen.model_id} ({gen.family}) does not use {PARAM_OPTIONS.get(e.param, e.param)}; "
                f"it takes {', '.join(takes) if takes else 'none of --steps/--sampler/--guidance/--truncation'}",
                param_hint=PARAM_OPTIONS.get(e.param, e.param)) from None
        stored_params = gen.resolved_params(params)
        if cond is None:
            if not gen.text_conditioned:
                raise click.BadParameter(str(cond_error), param_hint="--prompt")
            # the raw prompt drives a text-conditioned model; the recorded condition stays unspecified
            cond = Condition()
            click.echo(f"note: the findings parser cannot read this prompt ({str(cond_error).split(';')[0]}); it goes "
                       f"to {gen.model_id}'s text encoder as written and the batch records the condition as "
                       "unspecified", err=True)
    except (ConditionError, GeneratorError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    if seed + n > 2**63:
        raise click.ClickException("seed + n exceeds 2**63")
    store = BatchStore(out or settings.resolved_store_url)
    writer = store.create(gen.model_id, gen.model_hash, gen.backend, fmt, stored_params)
    try:
        for start in range(0, n, chunk):
            seeds = list(range(seed + start, seed + min(n, start + chunk)))
            imgs = gen.generate([cond] * len(seeds), seeds, params, [prompt] * len(seeds) if prompt else None)
            for img, s in zip(imgs, seeds):
                writer.add(img, s, cond, prompt)
        manifest = writer.commit()
    except GeneratorError as e:
        writer.abort()
        raise click.ClickException(str(e)) from e
    except BaseException:
        writer.abort()
        raise
    what = f"prompt {prompt!r}" if prompt and gen.text_conditioned else cond.describe()
    click.echo(f"{manifest.count} images ({what}) from {gen.model_id} [{gen.backend}] -> "
               f"batch {manifest.batch_id}", err=True)
    click.echo(store.batch_path(manifest.batch_id))

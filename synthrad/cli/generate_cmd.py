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
    models = [m for m in registry.list_models() if m.family == model]
    if not models:
        raise registry.UnknownModel(f"no model of family {model!r} is registered")
    default = get_settings().default_model
    return default if any(m.model_id == default for m in models) else models[0].model_id


def parse_condition(condition: str | None, prompt: str | None):
    """``--condition`` (findings text or JSON object) / ``--prompt`` (free text) -> Condition."""
    import json

    from services.common.findings import Condition
    from services.common.prompts import parse_prompt

    if condition and prompt:
        raise click.UsageError("give --condition or --prompt, not both")
    if not condition and not prompt:
        return Condition()
    text = condition or prompt
    if condition and condition.strip().startswith("{"):
        return Condition(**json.loads(condition))
    return parse_prompt(text)


@click.command(name="generate")
@click.option("--model", default=None, help="Model id (see `synthrad models list`) or family; default: settings.")
@click.option("--condition", default=None, help='Findings, e.g. "pleural effusion, no cardiomegaly" (or a JSON object).')
@click.option("--prompt", default=None, help="Free-text report; parsed into a condition (text models also see it).")
@click.option("--n", "n", type=click.IntRange(1, 100_000), default=16, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="First seed; image i uses seed+i.")
@click.option("--out", default=None, help="Store folder or fsspec URL (default: settings store).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True)
@click.option("--backend", default=None, help="auto | eager | compile | onnx (default: settings).")
@click.option("--device", default=None, help="auto | cpu | cuda (default: settings).")
@click.option("--steps", type=int, default=None, help="Sampler steps (diffusion).")
@click.option("--sampler", default=None, help="ddpm | ddim | dpmpp (diffusion).")
@click.option("--truncation", type=float, default=None, help="Truncation psi (StyleGAN2; 1 = none).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale (diffusion).")
@click.option("--chunk", type=int, default=64, show_default=True, hidden=True)
def command(model, condition, prompt, n, seed, out, fmt, backend, device, steps, sampler, truncation, guidance,
            chunk) -> None:
    """Generate N marked synthetic chest X-rays for one condition into a new batch; prints the batch path.

    \b
    Example:
      synthrad generate --model stylegan2-cxr64 --condition "pleural effusion, no cardiomegaly" \\
          --n 16 --seed 7 --out out/
    The same model, seed, condition, params and backend give the same pixels.
    """
    from services.common.config import get_settings
    from services.common.findings import ConditionError
    from services.common.store import BatchStore
    from services.generator import registry
    from services.generator.base import GenerationParams, GeneratorError

    settings = get_settings()
    try:
        cond = parse_condition(condition, prompt)
        model_id = resolve_model_id(model or settings.default_model)
        params = GenerationParams(steps=steps, sampler=sampler, guidance=guidance, truncation=truncation)
        gen = registry.load_generator(model_id, backend or settings.backend, device or settings.device)
    except (ConditionError, GeneratorError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    if seed + n > 2**63:
        raise click.ClickException("seed + n exceeds 2**63")
    store = BatchStore(out or settings.resolved_store_url)
    stored_params = {k: v for k, v in params.model_dump().items() if v is not None}
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
    click.echo(f"{manifest.count} images ({cond.describe()}) from {gen.model_id} [{gen.backend}] -> "
               f"batch {manifest.batch_id}", err=True)
    click.echo(store.batch_path(manifest.batch_id))

"""``synthrad models list|card ID|register DIR --model-id ID|evaluate ID [--data DIR]``."""

from __future__ import annotations

import click


@click.group(name="models")
def command() -> None:
    """Shipped and registered generator models (descriptors in services/generator/weights, $SYNTHRAD_HOME/models
    and SYNTHRAD_MODEL_DIRS)."""


@command.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List models: id, family, resolution, weights hash. Models that cannot be used are listed as BROKEN with
    the reason."""
    import json

    from services.generator import registry
    from services.generator.base import GeneratorError

    try:
        models = registry.list_models()
    except GeneratorError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps([m.model_dump(exclude={"card"}) for m in models], indent=2))
        return
    if not models:
        click.echo("no models registered")
        return
    w = max(len(m.model_id) for m in models)
    click.echo(f"{'MODEL':<{w}}  {'FAMILY':<16}  RES   HASH          DESCRIPTION")
    for m in models:
        if m.status == "ok":
            click.echo(f"{m.model_id:<{w}}  {m.family:<16}  {m.resolution:<4}  {m.model_hash[:12]}  {m.description}")
        else:
            click.echo(f"{m.model_id:<{w}}  {m.family:<16}  {m.resolution or '-':<4}  {'-':<12}  "
                       f"{m.status.upper()}: {m.error}")
    broken = sum(m.status != "ok" for m in models)
    if broken:
        click.echo(f"{broken} model(s) cannot be used until fixed (see above)", err=True)


@command.command(name="card")
@click.argument("model_id")
def card_cmd(model_id: str) -> None:
    """Print a model's card (markdown)."""
    from services.generator import registry
    from services.generator.base import GeneratorError

    try:
        info = registry.model_info(model_id)
        expected = registry.card_path(info.model_id)
    except GeneratorError as e:
        raise click.ClickException(str(e)) from e
    if info.card is None and expected is not None:
        raise click.ClickException(
            f"the model card of {info.model_id} is missing: its descriptor {registry.descriptor_file(info.model_id)} "
            f"names a card file, expected at {expected}; restore the file or fix \"card\" in the descriptor"
        )
    click.echo(info.card or f"# {info.model_id}\n\n(no model card)\n\nfamily: {info.family}, resolution: {info.resolution}")


@command.command(name="register")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--model-id", required=True, help="Id to serve it under (letters, digits, . _ -).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Descriptor folder (default: $SYNTHRAD_HOME/models, which the registry always scans).")
@click.option("--sampler", default=None, help="Default sampler: ddpm | ddim | dpmpp (default: dpmpp).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="Default sampler steps (default: 25).")
@click.option("--guidance", type=click.FloatRange(0.0, 50.0), default=None, help="Default guidance scale (default: 4.0).")
@click.option("--force", is_flag=True, help="Replace this folder's existing descriptor of the same id.")
def register_cmd(path: str, model_id: str, out: str | None, sampler: str | None, steps: int | None,
                 guidance: float | None, force: bool) -> None:
    """Register a local Stable-Diffusion-format diffusers folder (e.g. RoentGen) as model ID.

    Writes OUT/ID.json with the folder's sha256, so `synthrad generate --model ID` and the REST/gRPC
    platform serve it by id (restart a running server to pick it up). The weights stay where they are and
    are hashed again on every load; a changed folder is refused.
    """
    from services.generator import registry
    from services.generator.base import GeneratorError

    try:
        reg = registry.register_model(path, model_id, out, force=force, sampler=sampler, steps=steps,
                                      guidance=guidance)
    except registry.InvalidModelId as e:
        raise click.BadParameter(str(e), param_hint="--model-id") from None
    except (GeneratorError, OSError) as e:
        raise click.ClickException(str(e)) from e
    desc = reg.descriptor
    click.echo(f"registered {model_id} (latent_diffusion, {desc['resolution']}px, sha256 {desc['sha256']}) -> "
               f"{reg.path}", err=True)
    if not reg.scanned:
        click.echo(f"warning: {reg.path.parent} is not a folder the registry scans; add it to SYNTHRAD_MODEL_DIRS "
                   "(for the CLI and the server) to use the model", err=True)
    click.echo(str(reg.path))


@command.command(name="evaluate")
@click.argument("model_id")
@click.option("--data", default=None, type=click.Path(exists=True, file_okay=False),
              help="Labelled real images (e.g. ../shared/data/nih-chestxray14-64): the real reference is the shipped "
                   "classifier on their patient-disjoint test split. Default: the classifier card's held-out AUC.")
@click.option("--layout", default="nih", show_default=True, help="Layout of --data: nih, chexpert, mimic or folder.")
@click.option("--views", default="PA,AP", show_default=True, help="Views of --data to use (comma list) or 'all'.")
@click.option("--reference", default="auto", show_default=True,
              help="Without --data: the card's test set (auto = NIH ChestX-ray14; kermany-pneumonia-224 for lung "
                   "opacity of paediatric models).")
@click.option("--backend", default="auto", show_default=True, help="auto | eager | compile | onnx.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--n-per-condition", type=click.IntRange(min=2), default=200, show_default=True,
              help="Images generated per finding with it present and with it absent.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap replicates of the AUC CIs (0: none).")
@click.option("--truncation", type=float, default=None, help="StyleGAN2 truncation psi (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the result here.")
def evaluate_cmd(model_id, data, layout, views, reference, backend, device, n_per_condition, bootstrap, truncation,
                 seed, threads, json_out) -> None:
    """Conditional agreement of MODEL_ID: does it draw the findings it is conditioned on?

    The shipped independent classifier (trained on real labelled images only; services/metrics/evaluation/
    classifier) scores images generated with each finding present vs absent: generated AUC next to the same
    classifier's real held-out AUC, and their ratio (services/metrics/conditioning.py)."""
    import json
    from pathlib import Path

    from services.common.config import resolve_device
    from services.generator import registry
    from services.generator.base import GenerationParams, GeneratorError
    from services.metrics.conditioning import evaluate_conditioning, format_table
    from services.metrics.errors import MetricsError

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    try:
        gen = registry.load_generator(model_id, backend, dev)
        params = GenerationParams(truncation=truncation) if truncation is not None else None
        if params is not None:
            gen.check_params(params)
    except GeneratorError as e:
        raise click.ClickException(str(e)) from e
    picked = None if views.strip().lower() == "all" else tuple(v.strip().upper() for v in views.split(","))
    try:
        res = evaluate_conditioning(gen, data, layout, picked, n_per_condition, device=dev, seed=seed, params=params,
                                    bootstrap=bootstrap, reference=reference)
    except MetricsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(format_table(res))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, indent=2))

"""``synthrad models list|card ID``."""

from __future__ import annotations

import click


@click.group(name="models")
def command() -> None:
    """Shipped and registered generator models (descriptors in services/generator/weights and SYNTHRAD_MODEL_DIRS)."""


@command.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List models: id, family, resolution, weights hash."""
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
        click.echo(f"{m.model_id:<{w}}  {m.family:<16}  {m.resolution:<4}  {m.model_hash[:12]}  {m.description}")


@command.command(name="card")
@click.argument("model_id")
def card_cmd(model_id: str) -> None:
    """Print a model's card (markdown)."""
    from services.generator import registry
    from services.generator.base import GeneratorError

    try:
        info = registry.model_info(model_id)
    except GeneratorError as e:
        raise click.ClickException(str(e)) from e
    click.echo(info.card or f"# {info.model_id}\n\n(no model card)\n\nfamily: {info.family}, resolution: {info.resolution}")

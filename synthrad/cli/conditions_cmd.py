"""``synthrad conditions``: turn findings text into a condition."""

from __future__ import annotations

import json

import click


@click.group(name="conditions")
def command() -> None:
    """Parse findings text into a condition (present / absent / unspecified per finding)."""


@command.command(name="parse")
@click.argument("text", nargs=-1, required=True)
def parse(text: tuple[str, ...]) -> None:
    """Print the condition TEXT describes as JSON, e.g. "No pleural effusion. Cardiomegaly."."""
    from services.common.prompts import PromptError, parse_prompt

    try:
        cond = parse_prompt(" ".join(text))
    except PromptError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(2) from None
    out = {
        "condition": {f: s.value for f, s in cond.states().items()},
        "codes": cond.codes(),
        "description": cond.describe(),
    }
    click.echo(json.dumps(out, indent=2))


@command.command(name="vocabulary")
def vocabulary_cmd() -> None:
    """List the findings, synonyms and negation words the parser knows."""
    from services.common.prompts import vocabulary

    click.echo(vocabulary())

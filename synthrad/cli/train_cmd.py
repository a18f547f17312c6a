"""``synthrad train``: one sub-command per generator family."""

from __future__ import annotations

import importlib

import click

FAMILIES = {
    "stylegan2": ("synthrad.cli.train_stylegan2", "Train the class-conditional StyleGAN2."),
    "diffusion": ("synthrad.cli.train_diffusion", "Train the class-conditional pixel DDPM."),
}


class _LazyTrain(click.Group):
    def list_commands(self, ctx):
        return list(FAMILIES)

    def get_command(self, ctx, name):
        if name not in FAMILIES:
            return None
        return importlib.import_module(FAMILIES[name][0]).command

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, h) in FAMILIES.items()])


@click.group(cls=_LazyTrain, name="train")
def command() -> None:
    """Train a generator on real chest X-rays; checkpoints resume, progress shows losses and img/s."""


def run_options(default_views: str):
    """The dataset and run-folder options every ``synthrad train`` family takes."""
    from synthrad.cli.data_cmd import LAYOUT_NAMES

    options = [
        click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Dataset root folder."),
        click.option("--layout", type=click.Choice(list(LAYOUT_NAMES)), default="nih", show_default=True,
                     help="Dataset layout."),
        click.option("--views", default=default_views, show_default=True,
                     help="Comma-separated view positions to keep (e.g. PA,AP), or 'all'."),
        click.option("--split", default="train", show_default=True,
                     help="Dataset split to train on ('all' for every split)."),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Run folder (checkpoint, grids, export)."),
        click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt when it exists."),
        click.option("--overwrite", is_flag=True,
                     help="Start a new run even though OUT/checkpoint.pt exists (that checkpoint is replaced)."),
        click.option("--resume-from", "resume_from", default=None, metavar="MODEL",
                     help="Continue a shipped or exported model (id, alias or descriptor .json) from its training "
                          "state: networks, Adam moments, step and images seen (see docs/training.md)."),
        click.option("--replace", is_flag=True,
                     help="Export under --model-id even if a registered model has that id (the export then takes "
                          "its place); without it such an id is refused before training starts."),
        click.option("--amp/--no-amp", default=None, help="bf16 autocast (default: on for CUDA, off on CPU)."),
        click.option("--compile/--no-compile", "compile_", default=None,
                     help="torch.compile the networks (default: on for CUDA, off on CPU)."),
        click.option("--channels-last/--no-channels-last", default=None,
                     help="channels_last memory format (default: on for CUDA, off on CPU)."),
    ]

    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return decorate


def prepare_run(ctx: click.Context, family: str, out: str, resume: bool, overwrite: bool, views: str,
                other_views: str) -> list[str] | None:
    """Refuse to replace a run by accident, parse --views and say which views are used (stderr)."""
    from services.generator.train.common import check_run_folder, describe_views, parse_views

    try:
        check_run_folder(out, resume=resume, overwrite=overwrite)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    view_list = parse_views(views)
    default = ctx.get_parameter_source("views") == click.core.ParameterSource.DEFAULT
    click.echo(f"training on views: {describe_views(view_list)}"
               + (f"; the {family} default, choose others with --views (e.g. {other_views})" if default else ""),
               err=True)
    return view_list

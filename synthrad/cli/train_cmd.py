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

"""``synthrad`` command line. Sub-commands live in their own modules and are imported lazily, so
``synthrad --help`` is fast and one feature's heavy imports never slow another's."""

from __future__ import annotations

import importlib

import click

# name -> (module, help shown in `synthrad --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "conditions": ("synthrad.cli.conditions_cmd", "Parse findings text into a condition (JSON)."),
    "data": ("synthrad.cli.data_cmd", "Inspect chest X-ray datasets (NIH, CheXpert, MIMIC-CXR, folder)."),
    "generate": ("synthrad.cli.generate_cmd", "Generate marked synthetic images into a batch folder."),
    "models": ("synthrad.cli.models_cmd", "List shipped/registered models and show model cards."),
    "train": ("synthrad.cli.train_cmd", "Train a generator (stylegan2, diffusion) on real images."),
    "score": ("synthrad.cli.score_cmd", "Score synthetic images against real ones (FID, KID, IPR, ...)."),
    "evaluate": ("synthrad.cli.evaluate_cmd", "Utility, conditioning, memorisation, bias, per-finding, efficiency."),
    "study": ("synthrad.cli.study_cmd", "Reader studies: create, serve the reading page, results (UAR, CAR, kappa)."),
    "serve": ("synthrad.cli.serve_cmd", "Run the platform locally (Ray Serve: REST + gRPC + /metrics)."),
    "demo": ("synthrad.cli.demo_cmd", "The main job: serve, generate a batch per finding, score, report."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, help_text = COMMANDS[name]
        try:
            cmd = importlib.import_module(module).command
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("synthrad.cli"):
                return _unavailable(name, help_text)
            raise
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help from the table above: listing commands must not import torch or Ray.
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, h) in COMMANDS.items()])


def _unavailable(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    def cmd() -> None:
        raise click.ClickException(f"'synthrad {name}' is not available in this build")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="synthrad")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default: SYNTHRAD_LOG_LEVEL or INFO).")
@click.option("--log-json", is_flag=True, default=None, help="One JSON object per log line.")
def cli(log_level: str | None, log_json: bool | None) -> None:
    """synthrad: serve synthetic chest X-rays and score them.

    \b
    Quick start:
      synthrad demo                                   # serve, generate, score, print where results are
      synthrad conditions parse "No pleural effusion. Cardiomegaly."
      synthrad generate --model stylegan2-cxr64 --condition "pleural effusion" --n 16 --seed 7 --out out/
      synthrad score --real nih-cxr64 --synthetic out/<batch> --metrics fid,ipr

    Settings come from SYNTHRAD_* environment variables (see docs/configuration.md).
    """
    from services.common.logging import configure_logging

    configure_logging(log_level, log_json)


def main() -> None:
    cli(prog_name="synthrad")


if __name__ == "__main__":
    main()

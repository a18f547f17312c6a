"""``synthrad evaluate efficiency --model M``: peak memory for 8 images and time per 1000 images, per backend and
device (each measured in a fresh worker process: ``services/generator/efficiency.py``)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="efficiency")
@click.option("--model", required=True, help="A registered model id (synthrad models list).")
@click.option("--backends", default="eager,onnx", show_default=True, metavar="A,B",
              help="Backends to measure ('all': every backend the model's family has, including compile, which "
                   "compiles for minutes on a CPU); one the family lacks is reported skipped.")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, or auto (cpu, and cuda when a GPU exists — reported skipped otherwise).")
@click.option("--images", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Images timed per backend (below 1000 the time per 1000 is extrapolated, and says so).")
@click.option("--memory-batch", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Images of the cold first request whose peak memory is reported.")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="Diffusion steps (diffusion models).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Intra-op threads in the workers.")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds per worker before it is failed.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the report (JSON).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
def command(model, backends, device, images, memory_batch, steps, threads, timeout_s, json_out, progress) -> None:
    """Peak memory for a small batch and time per 1000 images of MODEL, per backend and device."""
    from services.generator.base import GeneratorError
    from services.generator.efficiency import efficiency_rows, measure_efficiency
    from services.metrics.evaluation.progress import tqdm_progress
    from services.metrics.evaluation.result import Table

    try:
        with tqdm_progress("efficiency", enabled=progress) as bar:
            chosen = None if backends.strip() == "all" else [b.strip() for b in backends.split(",") if b.strip()]
            report = measure_efficiency(model, chosen,
                                        device, images=images, memory_batch=memory_batch, threads=threads,
                                        params={"steps": steps} if steps else None, timeout_s=timeout_s,
                                        progress=bar)
    except GeneratorError as e:
        raise click.ClickException(str(e)) from None
    cols, rows = efficiency_rows(report)
    host = report.host
    click.echo(Table(title=f"Efficiency of {report.model_id} ({report.family}, {report.resolution} px) on "
                           f"{host.get('cpu', host.get('platform', 'this machine'))}",
                     columns=cols, rows=rows, note="; ".join(report.notes)).markdown())
    if json_out:
        Path(json_out).write_text(report.model_dump_json(indent=1))
        click.echo(f"report: {json_out}", err=True)

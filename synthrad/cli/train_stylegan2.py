"""``synthrad train stylegan2``: train the conditional StyleGAN2 on real chest X-rays."""

from __future__ import annotations

import json

import click

from synthrad.cli.train_cmd import prepare_run, run_options

RESOLUTIONS = (64, 128, 256)


def _resolution(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value not in RESOLUTIONS:
        raise click.BadParameter(f"{value} is not one of {', '.join(map(str, RESOLUTIONS))}.")
    return value


@click.command(name="stylegan2")
@run_options(default_views="PA")
@click.option("--resolution", type=int, default=64, show_default=True, callback=_resolution,
              help="Training resolution in pixels: 64, 128 or 256.")
@click.option("--kimg", type=float, default=1000.0, show_default=True, help="Total training length in 1000s of real images shown.")
@click.option("--max-minutes", type=float, default=None,
              help="Wall-clock budget for the whole run (data loading, training, final checkpoint, grid and export).")
@click.option("--max-steps", type=int, default=None, hidden=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--lr", type=float, default=0.0025, show_default=True, help="Adam learning rate (G and D).")
@click.option("--gamma", type=float, default=None, help="R1 weight (default 0.0002 * R^2 / batch).")
@click.option("--ema-kimg", type=float, default=10.0, show_default=True)
@click.option("--aug", type=click.Choice(["ada", "fixed", "none"]), default="ada", show_default=True)
@click.option("--aug-p", type=float, default=0.0, show_default=True, help="Initial (ada) or fixed augmentation probability.")
@click.option("--snap-minutes", type=float, default=5.0, show_default=True, help="Checkpoint + sample grid interval.")
@click.option("--model-id", default=None,
              help="Exported model id (default stylegan2-<OUT folder name>); a registered id needs --replace.")
@click.option("--channel-base", type=int, default=4096, show_default=True)
@click.option("--channel-max", type=int, default=256, show_default=True)
@click.option("--mapping-layers", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--cache-dir", default=None, help="Preprocessed-image cache (default: settings cache folder).")
@click.option("--no-progress", is_flag=True)
@click.pass_context
def command(ctx, data, layout, views, split, resolution, out, resume, overwrite, resume_from, replace, amp, compile_,
            channels_last, kimg, max_minutes, max_steps,
            batch, device, lr, gamma, ema_kimg, aug, aug_p, snap_minutes, model_id, channel_base, channel_max,
            mapping_layers, seed, threads, cache_dir, no_progress) -> None:
    """Train the class-conditional StyleGAN2 (non-saturating loss, lazy R1, EMA, ADA-style augmentation).

    \b
    Example (CPU, a few minutes):
      synthrad train stylegan2 --data ../shared/data/nih-chestxray14-64 --layout nih --views PA,AP \\
          --resolution 64 --out runs/sg2 --max-minutes 10 --batch 16
    Re-run with --resume to continue from runs/sg2/checkpoint.pt (an existing checkpoint is never replaced
    without --resume or --overwrite); --resume-from stylegan2-kermany128 continues a shipped model from its
    training state (the export gets a new id unless --replace).
    """
    from services.generator.train.stylegan2 import TrainConfig, train

    view_list = prepare_run(ctx, "stylegan2", out, resume, overwrite, views, "PA,AP or all")
    if resume_from and ctx.get_parameter_source("resolution") == click.core.ParameterSource.DEFAULT:
        resolution = 0  # the continued model's
    cfg = TrainConfig(
        out=out, data=data, layout=layout, views=view_list, split=None if split == "all" else split,
        resolution=resolution, resume=resume, overwrite=overwrite, resume_from=resume_from, replace=replace,
        amp=amp, compile=compile_, channels_last=channels_last, kimg=kimg, max_minutes=max_minutes, budget_from_process_start=True,
        max_steps=max_steps, batch=batch, device=device, lr_g=lr, lr_d=lr, gamma=gamma, ema_kimg=ema_kimg, aug=aug,
        aug_p=aug_p, snap_minutes=snap_minutes,
        model_id=model_id, seed=seed, threads=threads, cache_dir=cache_dir,
        progress=not no_progress,
        net={"channel_base": channel_base, "channel_max": channel_max, "mapping_layers": mapping_layers,
             "d_channel_base": channel_base, "d_channel_max": channel_max},
    )
    try:
        summary = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(summary, indent=2))

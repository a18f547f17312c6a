"""``synthrad train diffusion``: train the class-conditional pixel DDPM on real chest X-rays."""

from __future__ import annotations

import click

from synthrad.cli.train_cmd import prepare_run, run_options


@click.command(name="diffusion")
@run_options(default_views="all")
@click.option("--resolution", type=int, default=64, show_default=True,
              help="Training resolution in pixels (divisible by the UNet's downsampling, e.g. 32, 64, 128).")
@click.option("--max-minutes", type=float, default=None,
              help="Wall-clock budget for the whole run (data loading, training, final checkpoint, grid and export).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps (total, across resumes).")
@click.option("--batch", default=64, show_default=True, type=int)
@click.option("--lr", default=2e-4, show_default=True, type=float)
@click.option("--preset", default="cxr64", show_default=True,
              help="UNet size: cxr64 (~7.9M, 64 px) | cxr128 (~9.4M, 128 px) | small | tiny.")
@click.option("--model-id", default=None,
              help="Exported model id (default ddpm-<OUT folder name>); a registered id needs --replace.")
@click.option("--ema-decay", default=0.999, show_default=True, type=float)
@click.option("--p-uncond", default=0.1, show_default=True, type=float, help="Whole-condition dropout (CFG).")
@click.option("--p-drop-finding", default=0.15, show_default=True, type=float, help="Per-finding dropout to 'unspecified'.")
@click.option("--grid-every", default=1000, show_default=True, type=int, help="Steps between sample grids (0: none).")
@click.option("--grid-seeds", default=8, show_default=True, type=int, help="Images per condition row of a sample grid.")
@click.option("--grid-steps", default=20, show_default=True, type=int, help="Sampler steps of a sample grid.")
@click.option("--ckpt-every", default=1000, show_default=True, type=int, help="Steps between checkpoints.")
@click.option("--no-augment", is_flag=True, help="Disable the small random translations.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--threads", default=None, type=int, help="torch CPU threads (default: torch's choice).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def command(ctx, data, layout, views, split, resolution, out, resume, overwrite, resume_from, replace, amp, compile_,
            channels_last, max_minutes, max_steps, batch,
            lr, preset, model_id, ema_decay, p_uncond, p_drop_finding, grid_every, grid_seeds, grid_steps, ckpt_every,
            no_augment, seed, device,
            threads, no_progress) -> None:
    """Train the class-conditional pixel DDPM (EMA, resume, grids); exports OUT/<model-id>.{safetensors,json}.

    \b
    Example:
      synthrad train diffusion --data ../shared/data/nih-chestxray14-64 --layout nih --resolution 64 \\
          --out runs/ddpm --max-minutes 30 --batch 64
    Re-run with --resume to continue from runs/ddpm/checkpoint.pt (an existing checkpoint is never replaced
    without --resume or --overwrite); --resume-from ddpm-kermany128 continues a shipped model from its training
    state (the UNet and resolution are the model's; the export gets a new id unless --replace).
    """
    import torch

    from services.generator.models.ddpm.model import unet_config
    from services.generator.train.diffusion import DiffusionTrainConfig, train

    if threads:
        torch.set_num_threads(threads)
    if max_steps is None and max_minutes is None:
        raise click.UsageError("give --max-steps or --max-minutes (training has no natural end)")
    if not resume_from:
        try:
            unet_config(preset, resolution)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--resolution' / '--preset'") from e
    view_list = prepare_run(ctx, "diffusion", out, resume, overwrite, views, "PA or PA,AP")
    cfg = DiffusionTrainConfig(
        out=out, data=data, layout=layout, views=",".join(view_list) if view_list else "all",
        split=None if split == "all" else split, overwrite=overwrite, resume_from=resume_from, replace=replace,
        amp=amp, compile=compile_, channels_last=channels_last,
        resolution=resolution, preset=preset, model_id=model_id, batch=batch, lr=lr, ema_decay=ema_decay,
        p_uncond=p_uncond, p_drop_finding=p_drop_finding, augment=not no_augment, max_steps=max_steps,
        max_minutes=max_minutes, budget_from_process_start=True, grid_every=grid_every, grid_seeds=grid_seeds,
        grid_steps=grid_steps, ckpt_every=ckpt_every, seed=seed, device=device,
        progress=not no_progress,
    )
    try:
        desc = train(cfg, resume=resume)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    tr = desc["training"]
    click.echo(f"exported {out}/{desc['weights']} ({tr['parameters'] / 1e6:.1f}M params, {tr['steps']} steps, "
               f"{tr['train_seconds']:.0f}s on {tr['hardware']}); descriptor {out}/{desc['model_id']}.json")


if __name__ == "__main__":
    command()

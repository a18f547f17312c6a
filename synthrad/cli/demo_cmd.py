"""``synthrad demo``: the main job, end to end over the platform's REST API.

Starts the platform on this machine (CPU unless a GPU is there), asks the shipped default model for one batch
per finding, scores each batch against the shipped real reference (``nih-cxr64``), prints the scores (with the
extractor's stamp) and where the images are, and stops the platform.
"""

from __future__ import annotations

import json
import time

import click

from services.common.store import BATCH_FORMATS

FINDINGS = ("atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@click.command(name="demo")
@click.option("--model", default=None, help="Model id (default: SYNTHRAD_DEFAULT_MODEL, the shipped StyleGAN2).")
@click.option("--count", type=int, default=64, show_default=True, help="Images per finding.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of each batch's first image.")
@click.option("--reference", default=None, show_default="settings' default_reference (nih-cxr64)",
              help="Registered real reference set.")
@click.option("--metrics", "metric_list", default="fid,kid,ipr", show_default=True, help="Measures to compute.")
@click.option("--extractor", default="inception", show_default=True,
              help="Feature extractor; only 'inception' scores are called FID.")
@click.option("--format", "fmt", default="png", show_default=True,
              type=click.Choice(BATCH_FORMATS), help="Stored image format.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the results here.")
@click.option("--url", default=None, help="Use a running platform (e.g. http://127.0.0.1:8000) instead of starting one.")
@click.option("--api-key", default=None, envvar="SYNTHRAD_API_KEY", help="API key for --url platforms that need one.")
def command(model, count, seed, reference, metric_list, extractor, fmt, json_out, url, api_key) -> None:
    """Serve, generate a batch per finding, score each against real images, print where everything is."""
    from services.common.config import get_settings
    from services.gateway.app import start_local
    from synthrad.cli.serve_cmd import print_urls
    from synthrad.client import JobFailed, SynthradClient, SynthradError

    settings = get_settings()
    model = model or settings.default_model
    reference = reference or settings.default_reference
    metrics = [m.strip() for m in metric_list.split(",") if m.strip()]
    t0 = time.time()
    lp = None
    if url:
        click.echo(f"[1/4] using the platform at {url}", err=True)
    else:
        click.echo(f"[1/4] starting the platform on this machine (model {model}) ...", err=True)
        try:
            lp = start_local(settings, models=[model], http_port=0, grpc_port=0)
        except KeyboardInterrupt:
            from synthrad.cli.serve_cmd import _shutdown_quietly

            _shutdown_quietly()
            raise SystemExit(130) from None
        except Exception as e:  # noqa: BLE001
            from synthrad.cli.serve_cmd import _shutdown_quietly

            _shutdown_quietly()
            raise click.ClickException(f"could not start the platform: {e}") from e
    rows: list[dict] = []
    store_url = lp.store_url if lp else None
    try:
        if lp is not None:
            click.echo(f"      ready in {lp.started_s:.1f} s", err=True)
            print_urls(lp, echo=lambda s: click.echo(s, err=True))
        with SynthradClient(url or lp.http_url, api_key=api_key, timeout=600) as client:
            refs = client.references()
            if reference not in refs:
                raise click.ClickException(
                    f"reference {reference!r} is not registered (registered: {', '.join(refs) or 'none'}); "
                    "see `synthrad score --help` for registering one")
            served = {m["model_id"]: m for m in client.models()}
            if model not in served:
                raise click.ClickException(f"model {model!r} is not served there (served: {', '.join(served)})")
            info = served[model]
            click.echo(f"[2/4] generating {count} images per finding over REST "
                       f"({info['family']} {info['resolution']}px, backend {info.get('backend')}) ...", err=True)
            batches = {}
            for i, finding in enumerate(FINDINGS):
                man = client.create_batch(condition={finding: "present"}, count=count, seed=seed + i * count,
                                          model=model, format=fmt)
                batches[finding] = man
            click.echo(f"[3/4] scoring each batch against {reference} ({', '.join(metrics)}; extractor {extractor}) ...",
                       err=True)
            for finding in FINDINGS:
                man = batches[finding]
                t = time.time()
                res = client.score(man, reference=reference, metrics=metrics, extractor=extractor, progress=False)
                click.echo(f"      {finding}: scored in {time.time() - t:.1f} s", err=True)
                rows.append({"finding": finding, "batch_id": man["batch_id"], "count": man["count"],
                             "path": (f"{store_url.rstrip('/')}/{man['batch_id']}" if store_url
                                      else f"{url.rstrip('/')}/v1/batches/{man['batch_id']}/download"),
                             "scores": res["scores"], "extractor": res["extractor"],
                             "n_real": res.get("n_real"), "warnings": res.get("warnings", [])})
    except (JobFailed, SynthradError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        if lp is not None:
            click.echo("[4/4] stopping the platform ...", err=True)
            lp.shutdown()
    _report(rows, model, reference, time.time() - t0)
    if json_out:
        with open(json_out, "w") as fh:
            json.dump({"model": model, "reference": reference, "results": rows}, fh, indent=2, default=str)
        click.echo(f"results written to {json_out}")


def _report(rows: list[dict], model: str, reference: str, seconds: float) -> None:
    if not rows:
        return
    names = list(dict.fromkeys(s["name"] for r in rows for s in r["scores"]))
    stamp = rows[0]["extractor"] or {}
    click.echo("")
    click.echo(f"synthrad demo: model {model} vs real reference {reference} ({rows[0].get('n_real')} real images)")
    desc = f"extractor {stamp.get('name', '?')}"
    if stamp.get("weights_sha256"):
        desc += f", weights {str(stamp['weights_sha256'])[:12]}"
    if stamp.get("dims"):
        desc += f", {stamp['dims']}-d"
    pre = stamp.get("preprocessing")
    if isinstance(pre, dict) and pre:
        keys = ("resize", "size", "grey_to_rgb", "network_range")
        desc += ", preprocessing " + " ".join(f"{k}={pre[k]}" for k in keys if k in pre)
    elif pre:
        desc += f", preprocessing {pre}"
    click.echo(desc)
    if stamp.get("name") and stamp.get("name") != "inception":
        click.echo("(not the Inception extractor: Fréchet distances are FD_<extractor>, not FID)")
    header = ["finding", "images"] + names + ["stored at"]
    table = []
    for r in rows:
        vals = {s["name"]: s for s in r["scores"]}
        cells = [r["finding"], str(r["count"])]
        for n in names:
            s = vals.get(n)
            if s is None:
                cells.append("-")
            elif s.get("std") is not None:
                cells.append(f"{_fmt(s['value'])} ± {_fmt(s['std'])}")
            elif s.get("ci_low") is not None:
                cells.append(f"{_fmt(s['value'])} [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]")
            else:
                cells.append(_fmt(s["value"]))
        cells.append(r["path"])
        table.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    warns = sorted({w for r in rows for w in r.get("warnings", [])})
    for w in warns:
        click.echo(f"note: {w}")
    click.echo(f"done in {seconds:.0f} s; images are stored (with synthetic provenance) under the paths above.")

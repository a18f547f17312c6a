"""``synthrad data``: inspect chest X-ray datasets."""

from __future__ import annotations

import json

import click

LAYOUT_NAMES = {"nih": "NIH ChestX-ray14", "chexpert": "CheXpert", "mimic": "MIMIC-CXR-JPG", "folder": "image folder"}


@click.group(name="data")
def command() -> None:
    """Inspect chest X-ray datasets (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG, plain folders)."""


@command.command(name="summary")
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--layout", type=click.Choice(list(LAYOUT_NAMES)), default=None,
              help="Dataset layout (default: guessed from the label files in PATH).")
@click.option("--views", default="PA", show_default=True, help="View positions to keep, e.g. PA,AP, or 'all'.")
@click.option("--split", default=None, help="Keep one split only: train, valid or test.")
@click.option("--uncertain", type=click.Choice(["ignore", "positive", "negative"]), default="ignore",
              show_default=True, help="How to read uncertain (-1) labels (CheXpert, MIMIC, folder CSV).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary(path: str, layout: str | None, views: str, split: str | None, uncertain: str, as_json: bool) -> None:
    """Count images per finding state and per view in the dataset at PATH."""
    from services.common.datasets import DatasetError, dataset_summary, guess_layout, load_records

    try:
        if layout is None:
            layout = guess_layout(path) if _is_dir(path) else "nih"
            if layout is None:
                raise DatasetError(f"cannot tell the layout of {path}; pass --layout nih|chexpert|mimic|folder")
        records = load_records(path, layout, views=views, split=split, uncertain=uncertain)
    except DatasetError as e:
        raise click.ClickException(str(e)) from None
    info = dataset_summary(records)
    info.update(path=str(path), layout=layout, views_kept=views, split=split, uncertain=uncertain)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(_table(info))


def _is_dir(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_dir()


def _table(info: dict) -> str:
    from services.common.findings import FINDINGS

    lines = [
        f"{LAYOUT_NAMES[info['layout']]} at {info['path']} (views {info['views_kept']}, uncertain labels: "
        f"{info['uncertain']}{', split ' + info['split'] if info['split'] else ''})",
        f"{info['images']} images, {info['patients']} patients, {info['no_finding']} with no finding",
        "",
        f"{'finding':<30}{'present':>9}{'absent':>9}{'unspecified':>13}",
    ]
    for f, c in info["findings"].items():
        lines.append(f"{f:<30}{c['present']:>9}{c['absent']:>9}{c['unspecified']:>13}")
    short = {"atelectasis": "atelect.", "lung_opacity": "opacity", "pleural_effusion": "effusion",
             "enlarged_cardiac_silhouette": "cardiac"}
    lines += ["", f"{'view':<12}{'images':>8}" + "".join(f"{short[f]:>10}" for f in FINDINGS) + "   (present)"]
    for view, n in info["views"].items():
        present = info["present_by_view"][view]
        lines.append(f"{view:<12}{n:>8}" + "".join(f"{present[f]:>10}" for f in FINDINGS))
    lines += ["", "split: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items())]
    return "\n".join(lines)

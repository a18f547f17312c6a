"""One entry point: ``evaluate(kind, synthetic, options, progress)`` → :class:`EvaluationResult`.

CLI (``synthrad evaluate <kind>``), the metrics service (``MetricsReplica.evaluate``) and scoring jobs all call
this; ``synthetic`` is a :class:`SyntheticSet`, a batch id or a list of batch ids of one model (read through the
store and concatenated: a batch has one condition, so comparing conditions takes one batch per condition)."""

from __future__ import annotations

import time

from pydantic import BaseModel

from services.metrics.evaluation.inputs import SyntheticSet, load_batches
from services.metrics.evaluation.progress import ProgressFn, no_progress
from services.metrics.evaluation.registry import get_evaluation, parse_options
from services.metrics.evaluation.result import EvaluationResult


def evaluate(kind: str, synthetic: "SyntheticSet | str | list[str]", options: BaseModel | dict | None = None,
             progress: ProgressFn | None = None, store_url: str | None = None) -> EvaluationResult:
    ev = get_evaluation(kind)
    opts = parse_options(ev.kind, options)
    if isinstance(synthetic, SyntheticSet):
        syn = synthetic
    else:
        syn = load_batches([synthetic] if isinstance(synthetic, str) else list(synthetic), store_url)
    t0 = time.perf_counter()
    result: EvaluationResult = ev.run(syn, opts, progress or no_progress)
    result.seconds = round(time.perf_counter() - t0, 2)
    if not result.provenance.options:
        result.provenance.options = opts.model_dump(mode="json", exclude={"data"})
    else:
        result.provenance.options.pop("data", None)
    return _without_paths(result, getattr(opts, "data", None))


def _without_paths(result: EvaluationResult, data) -> EvaluationResult:
    """A dataset's folder is the server's business: wherever a kind wrote it into the result, it is replaced by
    the dataset's name (results are served over the API and written into shared reports)."""
    if data is None:
        return result
    from pathlib import Path

    text = result.model_dump_json()
    folders = {str(data.path), str(Path(data.path).expanduser()), str(Path(data.path).expanduser().resolve())}
    hit = False
    for folder in sorted(folders, key=len, reverse=True):
        if folder and folder in text:
            text, hit = text.replace(folder, f"<{data.display}>"), True
    return EvaluationResult.model_validate_json(text) if hit else result

"""Evaluations: "is this batch worth training on?" — beyond set-to-set distances (``services.metrics.measures``).

Each kind needs more than two feature sets: labels, a classifier, the generator's training set. One module per
kind, registered in ``registry.py``, run through ``api.evaluate`` (CLI, metrics service, scoring jobs):

```
conditioning.py   does each image show the finding it was asked for? (the shipped independent classifier)
utility.py        augmentation, train-on-synthetic-test-on-real, feature-extraction utility (seeds + Wilcoxon)
memorisation.py   nearest-real-neighbour search against the training set, calibrated threshold, authenticity, C_T
bias.py           burned-in markers / text in real vs synthetic (and the --crop-border control)
per_finding.py    FID / KID / precision / recall per finding and state of a batch's conditions
classifier/       the independent CXR classifier (architecture, weights + card, training script)
indexes/          shipped training-set indexes (features only, no images) of the shipped models
inputs.py         SyntheticSet (a batch with its conditions), RealData / DataSpec (a labelled real dataset)
result.py         EvaluationResult: tables, headline numbers, figures, provenance (extractor, classifier, seeds,
                  set sizes)
report.py         the HTML report of one or more results
stats.py          paired tests and CIs shared by the kinds (Wilcoxon, bootstrap, Wilson)
```
"""

from services.metrics.evaluation.api import evaluate  # noqa: F401

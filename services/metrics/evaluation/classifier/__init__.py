"""The independent chest X-ray classifier of the conditioning evaluation: a ResNet-18 trained on real labelled
images only (NIH ChestX-ray14 + Kermany, patient-disjoint train split), shipped as weights + json + card.

``model.py``  load it (sha256-checked) and predict per-finding probabilities; ``train.py`` the maintainer program
that trains it and writes ``cxr-classifier-64.{safetensors,json,md}``.
"""

from services.metrics.evaluation.classifier.model import CXRClassifier, load_classifier  # noqa: F401

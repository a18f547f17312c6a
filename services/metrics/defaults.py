"""Every default of the scoring layer, in one place: :func:`services.metrics.api.score`, the measures
(``services/metrics/measures/``), the measure functions themselves and ``synthrad score`` read them from here.

Settings (``services.common.config.get_settings()``) hold what a deployment configures (the default reference,
the device, the cache folder, the Inception weights file); this file holds the scoring conventions.
"""

from __future__ import annotations

# ---- what to score, with what -------------------------------------------------------------------------
METRICS: tuple[str, ...] = ("fid",)  # score() without ``metrics``; the gateway's default too
CLI_METRICS = "fid,kid,ipr"  # ``synthrad score`` without ``--metrics``
EXTRACTOR = "inception"  # the standard FID Inception-V3 (the only one whose scores are called FID / KID)
DTYPE = "float32"  # extractor compute dtype

# ---- options every measure shares ---------------------------------------------------------------------
SEED = 0
CI_LEVEL = 0.95
BOOTSTRAP: int | None = None  # None = :func:`bootstrap_replicates`
BOOTSTRAP_SMALL_SETS = 100  # replicates when min(n) < feature dims: each an n×n eigen-solve (cheap)
BOOTSTRAP_LARGE_SETS = 20  # replicates otherwise: each a dims×dims eigen-solve (~seconds at 2048-d)

# ---- per measure ----------------------------------------------------------------------------------------
K_IPR = 3  # improved precision/recall (Kynkäänniemi et al. 2019)
K_PRDC = 5  # density/coverage (Naeem et al. 2020)
KID_SUBSETS = 100  # torch-fidelity's defaults
KID_SUBSET_SIZE = 1000
SVM_TRAIN_FRACTION = 0.1  # separability: 10 % train / 90 % validation
PR_BOOTSTRAP_MAX_N = 5000  # precision/recall CIs subsample larger sets to this many points
KNN_BATCH = 1024  # rows per block of k-NN distance computations (memory O(block × n))


def bootstrap_replicates(n_real: int, n_synthetic: int, dims: int) -> int:
    """Bootstrap replicates for FID / precision / recall CIs when the caller gives none."""
    return BOOTSTRAP_SMALL_SETS if min(n_real, n_synthetic) < dims else BOOTSTRAP_LARGE_SETS


def reference() -> str:
    """The real reference set scores compare against when none is named (``Settings.default_reference``)."""
    from services.common.config import get_settings

    return get_settings().default_reference

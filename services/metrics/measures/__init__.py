"""Pure measure functions (numpy in, numbers out). See each module for the published definition used."""

from services.metrics.measures.fid import (
    GaussianStats,
    SampleSizeWarning,
    bootstrap_fd,
    frechet_distance,
    frechet_distance_features,
    trace_sqrt_product,
)
from services.metrics.measures.kid import kid
from services.metrics.measures.prdc import bootstrap_precision_recall, density_coverage, improved_precision_recall

__all__ = [
    "GaussianStats",
    "SampleSizeWarning",
    "bootstrap_fd",
    "bootstrap_precision_recall",
    "density_coverage",
    "frechet_distance",
    "frechet_distance_features",
    "improved_precision_recall",
    "kid",
    "trace_sqrt_product",
]

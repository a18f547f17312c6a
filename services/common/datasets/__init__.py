"""Chest X-ray dataset adapters (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG, plain folders) onto FINDINGS.

``load_records(path, layout)`` -> list of :class:`Record`; ``XrayDataset`` turns records into training
tensors; ``dataset_summary`` counts findings and views. Label mappings: docs/datasets.md.
"""

from .loading import LAYOUTS, guess_layout, load_records
from .records import UNCERTAIN_POLICIES, DatasetError, Record, dataset_summary
from .splits import PATIENT_SPLITS, SPLIT_BY, patient_split


def __getattr__(name: str):  # torch is imported only when the Dataset is wanted
    if name == "XrayDataset":
        from .torch_dataset import XrayDataset

        return XrayDataset
    raise AttributeError(name)


__all__ = ["LAYOUTS", "PATIENT_SPLITS", "SPLIT_BY", "UNCERTAIN_POLICIES", "DatasetError", "Record", "XrayDataset", "dataset_summary",
           "guess_layout", "load_records", "patient_split"]

from __future__ import annotations

import pytest

from study_data import make_batches, make_real_folder


@pytest.fixture
def study_inputs(tmp_path):
    """(store url, [batch ids of model-a (effusion present), model-b (absent)], real folder)."""
    url, ids = make_batches(tmp_path / "store", n=6)
    return url, ids, make_real_folder(tmp_path / "real", n_each=8)

"""Per-finding fidelity against a reference computation: each group's scores equal ``score()`` on that group."""

from __future__ import annotations

import numpy as np
import pytest
from repo_paths import NIH64 as NIH

from services.common.findings import FINDINGS
from services.metrics.api import score
from services.metrics.evaluation import evaluate
from services.metrics.evaluation.inputs import DataSpec, SyntheticSet, load_real
from services.metrics.evaluation.registry import parse_options


@pytest.fixture(scope="module")
def real():
    return load_real(DataSpec(path=str(NIH), layout="nih", split_by="patient"), 64, splits=("train", "test"))


def test_each_group_equals_score_on_that_group(real):
    # "synthetic" = real training images, asked for the findings they have
    syn = SyntheticSet(real.train_images[-300:], real.train_codes[-300:], description="train images")
    spec = DataSpec(path=str(NIH), layout="nih", split_by="patient")
    res = evaluate("per-finding", syn, {"data": spec, "extractor": "cxr-encoder", "min_group": 10})
    groups = {(g["finding"], g["state"]): g for g in res.details["groups"]}
    j = FINDINGS.index("pleural_effusion")
    g = groups[("pleural_effusion", "absent")]
    rm, sm = real.test_codes[:, j] == 0, syn.codes[:, j] == 0
    assert (g["n_real"], g["n_synthetic"]) == (int(rm.sum()), int(sm.sum()))
    ref = score(real.test_images[rm], syn.images[sm], ["fid", "kid", "ipr"], "cxr-encoder", bootstrap=0, cache=False)
    want = {s.name: s.value for s in ref.scores}
    assert set(want) == {"FD_cxr-encoder", "KID_cxr-encoder", "precision", "recall"}  # never "FID" for cxr-encoder
    for k, v in want.items():
        assert g["scores"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    # groups too small on either side are listed with their sizes and no values
    small = [k for k, v in groups.items() if min(v["n_real"], v["n_synthetic"]) < 10]
    assert small and all(groups[k]["scores"] == {} for k in small)
    assert any("not scored" in w for w in res.warnings)
    assert res.provenance.extractors["cxr-encoder"] and res.provenance.set_sizes == {"real": len(real.test_images),
                                                                                   "synthetic": 300}
    assert res.tables[0].columns[:4] == ["finding", "state", "n real", "n synthetic"]


def test_options_are_checked_with_the_field_named():
    from services.metrics.errors import MetricsError

    with pytest.raises(MetricsError, match="min_group"):
        parse_options("per-finding", {"data": {"path": "x"}, "min_group": 1})
    with pytest.raises(MetricsError, match="data"):
        parse_options("per-finding", {})
    with pytest.raises(MetricsError, match="unknown evaluation 'fidelity'"):
        parse_options("fidelity", {})


def test_a_set_of_arrays_needs_matching_codes():
    syn = SyntheticSet(np.zeros((3, 8, 8)), np.full((3, 4), 2))
    assert syn.n == 3 and syn.codes.dtype == np.int8 and syn.seeds == [0, 1, 2]

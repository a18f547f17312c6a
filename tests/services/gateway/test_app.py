"""The load test stays consistent with the code (the KubeRay manifests and the Serve app graph: tests/deploy/test_manifests.py)."""

from __future__ import annotations

import ast

from repo_paths import ROOT


def test_locustfile_parses():
    tree = ast.parse((ROOT / "loadtests" / "locustfile.py").read_text())
    assert any(isinstance(n, ast.ClassDef) and n.name == "SynthradUser" for n in tree.body)

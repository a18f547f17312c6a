"""The KubeRay manifest, the Serve app graph and the load test stay consistent with the code."""

from __future__ import annotations

import ast

import yaml
from repo_paths import ROOT


def _serve_config() -> dict:
    rs = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "rayservice.yaml").read_text())
    assert rs["kind"] == "RayService"
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def test_rayservice_serve_config_is_valid_and_matches_the_app():
    from ray.serve.schema import ServeDeploySchema

    from services.gateway.app import build_app
    from services.gateway.grpc_servicer import SERVICER_FUNCTIONS

    cfg = ServeDeploySchema(**_serve_config())
    assert cfg.grpc_options.grpc_servicer_functions == SERVICER_FUNCTIONS
    app_cfg = cfg.applications[0]
    assert app_cfg.import_path == "services.gateway.app:app_builder"
    models = app_cfg.args["models"].split(",")
    app = build_app(models=models, device="cpu")  # binding only: nothing is loaded or started
    gateway = app._bound_deployment
    assert gateway.name == "gateway"
    gens, metrics = gateway.init_args[0], gateway.init_args[1]
    names = {gateway.name, metrics._bound_deployment.name} | {g._bound_deployment.name for g in gens.values()}
    assert names == {d.name for d in app_cfg.deployments}
    for fn in SERVICER_FUNCTIONS:  # importable the way Serve's proxy imports them
        mod, attr = fn.rsplit(".", 1)
        assert callable(getattr(__import__(mod, fromlist=[attr]), attr))


def test_locustfile_parses():
    tree = ast.parse((ROOT / "loadtests" / "locustfile.py").read_text())
    assert any(isinstance(n, ast.ClassDef) and n.name == "SynthradUser" for n in tree.body)

"""The Kubernetes deploy (deploy/k8s: kustomize base + overlays) validates, offline, and agrees with the code.

* Every document of the base and of each rendered overlay validates: the RayService against the vendored KubeRay
  schema (deploy/schemas/rayservice-ray.io-v1.schema.json, whose embedded Kubernetes types resolve to the strict
  Kubernetes OpenAPI definitions that the kubernetes-validate package ships), Services / NetworkPolicies with
  kubernetes-validate (strict) for each of ``K8S_VERSIONS``, PodMonitor / ServiceMonitor against the vendored
  Prometheus Operator subsets. Negative tests show that the validation rejects wrong types and unknown fields.
* The overlays are rendered here, without kustomize: ``resources`` (files and directories) and ``patches`` with a
  ``path`` to a JSON 6902 patch and a ``target`` -- any other kustomization field fails the test, so the renderer
  never silently differs from ``kubectl kustomize``.
* The image the manifests name is the one deploy/k8s/Dockerfile and deploy/k8s/README.md say to build; the Ray
  version of the base image, of ``rayVersion`` and of the package pin agree.
* The Serve config (``serveConfigV2``) validates against Ray Serve's schema; its ``import_path`` imports; its ``args``
  are ones ``app_builder`` reads; its deployments are the ones the application graph has; the gateway runs 2+
  replicas; the GPU overlay requests GPUs and puts the generators on GPU shares, the CPU one requests none; the
  replicas' Ray resources fit the worker groups at min and at max replicas.
"""

from __future__ import annotations

import ast
import copy
import importlib.resources
import inspect
import json
import re
from pathlib import Path

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource
from repo_paths import ROOT

K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "deploy" / "schemas"
#: Kubernetes versions the core kinds (and the Kubernetes types inside the CRDs) are validated for
K8S_VERSIONS = ("1.30", "1.37")
RENDERINGS = {"base": K8S / "base", "cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
CORE_KINDS = {"Service", "NetworkPolicy"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches"}


# ---- rendering (the subset of kustomize the overlays use) ---------------------------------------------------------
def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _target_matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    want = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    return all(want[k] == v for k, v in target.items())


def render(directory: Path, used: set[Path] | None = None) -> list[dict]:
    """Documents of a kustomization directory; ``used`` collects every file the rendering read."""
    used = used if used is not None else set()
    kfile = directory / "kustomization.yaml"
    used.add(kfile.resolve())
    k = yaml.safe_load(kfile.read_text())
    assert set(k) <= KUSTOMIZATION_KEYS, f"{kfile}: fields this renderer does not implement: {set(k) - KUSTOMIZATION_KEYS}"
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    docs: list[dict] = []
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        if p.is_dir():
            docs += render(p, used)
        else:
            used.add(p)
            docs += _load_docs(p)
    for patch in k.get("patches", []):
        assert set(patch) == {"path", "target"}, f"{kfile}: only JSON 6902 patches from a file with a target"
        p = (directory / patch["path"]).resolve()
        used.add(p)
        ops = yaml.safe_load(p.read_text())
        assert isinstance(ops, list), f"{p} is not a JSON 6902 patch"
        hits = [i for i, d in enumerate(docs) if _target_matches(d, patch["target"])]
        assert len(hits) == 1, f"{p}: target {patch['target']} matches {len(hits)} documents"
        docs[hits[0]] = jsonpatch.apply_patch(docs[hits[0]], ops)  # a failing "test" op raises
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(d) for name, d in RENDERINGS.items()}


def _rayservice(docs: list[dict]) -> dict:
    (rs,) = [d for d in docs if d["kind"] == "RayService"]
    return rs


def _serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(_rayservice(docs)["spec"]["serveConfigV2"])


def _groups(rs: dict) -> list[dict]:
    """Head + worker groups as {name, spec, min, max, containers}."""
    rc = rs["spec"]["rayClusterConfig"]
    out = [{"name": "head", "spec": rc["headGroupSpec"], "min": 1, "max": 1}]
    out += [{"name": g["groupName"], "spec": g, "min": g.get("minReplicas", 0), "max": g.get("maxReplicas", 0)}
            for g in rc.get("workerGroupSpecs", [])]
    for g in out:
        g["containers"] = g["spec"]["template"]["spec"]["containers"]
    return out


# ---- schemas --------------------------------------------------------------------------------------------------------
def _k8s_definitions(version: str) -> dict:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return json.loads((folder / f"v{version}.0-local-strict" / "_definitions.json").read_text())


def _validator(schema_file: str, version: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    registry = Registry().with_resources([
        ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(_k8s_definitions(version))),
    ])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


CRD_SCHEMAS = {
    "RayService": "rayservice-ray.io-v1.schema.json",
    "PodMonitor": "podmonitor-monitoring.coreos.com-v1.schema.json",
    "ServiceMonitor": "servicemonitor-monitoring.coreos.com-v1.schema.json",
}


def validate(doc: dict, version: str) -> None:
    """Raise a jsonschema.ValidationError if ``doc`` is not valid for Kubernetes ``version``."""
    if doc["kind"] in CRD_SCHEMAS:
        _validator(CRD_SCHEMAS[doc["kind"]], version).validate(doc)
    else:
        assert doc["kind"] in CORE_KINDS, f"no schema chosen for kind {doc['kind']}"
        kubernetes_validate.validate(doc, version, strict=True)


def _errors(doc: dict, version: str = K8S_VERSIONS[-1]) -> str:
    try:
        validate(doc, version)
    except jsonschema.ValidationError as e:
        return e.message
    return ""


# ---- every manifest validates ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_document_validates(rendered, rendering, version):
    docs = rendered[rendering]
    assert {d["kind"] for d in docs} == {"RayService", "NetworkPolicy", "Service", "PodMonitor", "ServiceMonitor"}
    for doc in docs:
        validate(doc, version)  # raises with the path of the first error


def test_every_yaml_file_under_deploy_k8s_is_part_of_a_rendering():
    used: set[Path] = set()
    for d in RENDERINGS.values():
        render(d, used)
    files = {p.resolve() for p in K8S.rglob("*.yaml")} | {p.resolve() for p in K8S.rglob("*.yml")}
    assert files - used == set(), "YAML files no kustomization uses (and so no test validates)"


def test_the_overlays_differ_only_where_meant(rendered):
    base, cpu, gpu = rendered["base"], rendered["cpu"], rendered["gpu"]
    assert cpu == base
    others = lambda docs: [d for d in docs if d["kind"] != "RayService"]  # noqa: E731
    assert others(gpu) == others(base)
    b, g = copy.deepcopy(_rayservice(base)), copy.deepcopy(_rayservice(gpu))
    for rs in (b, g):
        rs["spec"].pop("serveConfigV2")
        rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] = [
            w for w in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if w["groupName"] != "gpu"]
    assert g == b


# ---- the validation bites --------------------------------------------------------------------------------------------
def _mutated(rendered, kind: str, change) -> dict:
    doc = copy.deepcopy(next(d for d in rendered["gpu"] if d["kind"] == kind))
    change(doc)
    return doc


@pytest.mark.parametrize("case", [
    "replicas-as-string", "typo-in-cluster-config", "auth-mode-enum", "container-port-as-string",
    "unknown-pod-field", "quantity-as-list",
])
def test_rayservice_schema_rejects_wrong_manifests(rendered, case):
    assert _errors(_rayservice(rendered["gpu"])) == ""

    def change(rs):
        rc = rs["spec"]["rayClusterConfig"]
        worker = rc["workerGroupSpecs"][-1]
        container = worker["template"]["spec"]["containers"][0]
        if case == "replicas-as-string":
            worker["minReplicas"] = "1"
        elif case == "typo-in-cluster-config":
            rc["enableInTreeAutoscalling"] = rc.pop("enableInTreeAutoscaling")
        elif case == "auth-mode-enum":
            rc["authOptions"]["mode"] = "password"
        elif case == "container-port-as-string":  # inside the Kubernetes PodTemplateSpec the CRD embeds
            container["ports"][0]["containerPort"] = "8000"
        elif case == "unknown-pod-field":
            worker["template"]["spec"]["tolerationz"] = worker["template"]["spec"].pop("tolerations")
        elif case == "quantity-as-list":
            container["resources"]["limits"]["nvidia.com/gpu"] = ["1"]

    assert _errors(_mutated(rendered, "RayService", change)) != ""


def test_core_and_monitor_schemas_reject_wrong_manifests(rendered):
    for kind in ("NetworkPolicy", "Service", "PodMonitor", "ServiceMonitor"):
        assert _errors(next(d for d in rendered["gpu"] if d["kind"] == kind)) == ""
    bad = [
        _mutated(rendered, "NetworkPolicy", lambda d: d["spec"].__setitem__("policyTypes", "Ingress")),
        _mutated(rendered, "Service", lambda d: d["spec"]["ports"][0].__setitem__("port", "9000")),
        _mutated(rendered, "Service", lambda d: d["spec"].__setitem__("selektor", d["spec"].pop("selector"))),
        _mutated(rendered, "PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("port", 8080)),
        _mutated(rendered, "PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("interval", "30")),
        _mutated(rendered, "ServiceMonitor", lambda d: d["spec"].__setitem__("endpoint", d["spec"].pop("endpoints"))),
    ]
    for doc in bad:
        assert _errors(doc) != "", doc


def test_the_renderer_applies_test_ops_and_refuses_unknown_kustomize_fields(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "cm.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {}\n")
    (base / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [cm.yaml]\n")
    ov = tmp_path / "ov"
    ov.mkdir()
    (ov / "p.yaml").write_text("- {op: test, path: /metadata/name, value: b}\n")
    (ov / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\n"
        "patches: [{path: p.yaml, target: {kind: Service, name: a}}]\n")
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        render(ov)
    (ov / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\nnamePrefix: x-\n")
    with pytest.raises(AssertionError, match="namePrefix"):
        render(ov)


# ---- the image ---------------------------------------------------------------------------------------------------
def _built_image() -> str:
    docker = (K8S / "Dockerfile").read_text()
    readme = (K8S / "README.md").read_text()
    in_dockerfile = re.findall(r"docker build -f deploy/k8s/Dockerfile -t (\S+) \.", docker)
    in_readme = re.findall(r"docker build -f deploy/k8s/Dockerfile -t (\S+) \.", readme)
    assert len(set(in_dockerfile)) == 1 and set(in_readme) == set(in_dockerfile), (in_dockerfile, in_readme)
    return in_dockerfile[0]


def test_manifests_name_the_image_the_dockerfile_builds(rendered):
    image = _built_image()
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert image.endswith(f":{version}"), "tag the image with the package version"
    for name, docs in rendered.items():
        for g in _groups(_rayservice(docs)):
            assert {c["image"] for c in g["containers"]} == {image}, (name, g["name"])


def test_dockerfile_matches_the_ray_version_and_copies_what_exists(rendered):
    docker = (K8S / "Dockerfile").read_text()
    ray_pin = re.search(r'"ray\[serve\]==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_pin)}-py311\S*$", docker, re.M), "base image != ray pin"
    for docs in rendered.values():
        assert _rayservice(docs)["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin
    for line in re.findall(r"^COPY (.+)$", docker, re.M):
        *sources, _dest = [w for w in line.split() if not w.startswith("--")]
        for s in sources:
            assert (ROOT / s).exists(), f"Dockerfile copies {s}, which is not in the repository"


# ---- the Serve application ----------------------------------------------------------------------------------------
def _args_app_builder_reads() -> set[str] | type:
    """The keys ``app_builder`` reads from its ``args`` (or the pydantic model it validates them with)."""
    from pydantic import BaseModel

    from services.gateway import app as app_mod

    src = inspect.getsource(app_mod.app_builder)
    tree = ast.parse(src)
    for node in ast.walk(tree):  # an options model used by app_builder, if it has one
        if isinstance(node, ast.Name):
            obj = getattr(app_mod, node.id, None)
            if isinstance(obj, type) and issubclass(obj, BaseModel):
                return obj
    keys = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "args"
                and node.args and isinstance(node.args[0], ast.Constant)):
            keys.add(node.args[0].value)
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "args"
                and isinstance(node.slice, ast.Constant)):
            keys.add(node.slice.value)
    assert keys, "found no args that app_builder reads"
    return keys


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_serve_config_matches_the_application(rendered, rendering, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from services.gateway import app as app_mod
    from services.gateway.grpc_servicer import SERVICER_FUNCTIONS

    cfg = ServeDeploySchema(**_serve_config(rendered[rendering]))
    assert cfg.grpc_options.grpc_servicer_functions == SERVICER_FUNCTIONS
    assert cfg.http_options.port == 8000 and cfg.grpc_options.port == 9000
    (app_cfg,) = cfg.applications
    module, attr = app_cfg.import_path.split(":")
    assert (module, attr) == ("services.gateway.app", "app_builder")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    assert callable(builder)

    accepted = _args_app_builder_reads()
    if isinstance(accepted, set):
        assert set(app_cfg.args) <= accepted, f"args app_builder ignores: {set(app_cfg.args) - accepted}"
    else:
        accepted.model_validate(app_cfg.args)
    seen = {}
    monkeypatch.setattr(app_mod, "build_app", lambda **kw: seen.update(kw) or "app")
    assert builder(dict(app_cfg.args)) == "app"
    models = seen["models"]
    assert models == app_cfg.args["models"].split(",")
    assert set(models) <= set(app_mod.registered_models()), "serving models that are not registered"
    monkeypatch.undo()

    app = app_mod.build_app(models=models, device="cpu")  # binding only: nothing is loaded or started
    gateway = app._bound_deployment
    gens, metrics = gateway.init_args[0], gateway.init_args[1]
    names = {gateway.name, metrics._bound_deployment.name} | {g._bound_deployment.name for g in gens.values()}
    assert names == {d.name for d in app_cfg.deployments}
    for fn in SERVICER_FUNCTIONS:  # importable the way Serve's proxy imports them
        mod, fattr = fn.rsplit(".", 1)
        assert callable(getattr(__import__(mod, fromlist=[fattr]), fattr))

    deps = {d.name: d.model_dump(exclude_unset=True) for d in app_cfg.deployments}
    assert deps["gateway"]["num_replicas"] >= 2, "the gateway is replicated (jobs are durable in the shared store)"
    for name, d in deps.items():
        if name.startswith("generator-"):
            a = d["autoscaling_config"]
            assert 1 <= a["min_replicas"] <= a["max_replicas"], name


def _actor_demand(deps: dict[str, dict], at: str) -> list[tuple[str, dict[str, float]]]:
    out = []
    for name, d in deps.items():
        opts = d.get("ray_actor_options", {})
        res = {"CPU": float(opts.get("num_cpus", 1)), "GPU": float(opts.get("num_gpus", 0))}
        n = (d["autoscaling_config"][f"{at}_replicas"] if "autoscaling_config" in d else d.get("num_replicas", 1))
        out += [(name, res)] * n
    return out


def _node_resources(group: dict) -> dict[str, float]:
    params = group["spec"].get("rayStartParams", {})
    limits = group["containers"][0]["resources"]["limits"]
    return {"CPU": float(params.get("num-cpus", limits.get("cpu", 0))),
            "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_gpu_requests_and_capacity(rendered, rendering):
    from ray.serve.schema import ServeDeploySchema

    docs = rendered[rendering]
    rs = _rayservice(docs)
    (app_cfg,) = ServeDeploySchema(**_serve_config(docs)).applications
    deps = {d.name: d.model_dump(exclude_unset=True) for d in app_cfg.deployments}
    groups = _groups(rs)
    gpu_limits = {g["name"]: g["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") for g in groups}
    gens = [d for n, d in deps.items() if n.startswith("generator-")]
    if rendering == "gpu":
        assert app_cfg.args["device"] == "cuda"
        assert gpu_limits["gpu"] == "1"
        gpu_group = next(g for g in groups if g["name"] == "gpu")
        c = gpu_group["containers"][0]["resources"]
        assert c["requests"]["nvidia.com/gpu"] == c["limits"]["nvidia.com/gpu"], "GPUs: requests == limits"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            gpu_group["spec"]["template"]["spec"]["tolerations"]
        assert all(d["ray_actor_options"].get("num_gpus", 0) > 0 for d in gens)
    else:
        assert app_cfg.args["device"] == "cpu"
        assert not any(gpu_limits.values())
        assert "nvidia.com/gpu" not in json.dumps(rs)
        assert all("num_gpus" not in d.get("ray_actor_options", {}) for d in deps.values())

    for g in groups[1:]:
        assert g["min"] <= g["spec"].get("replicas", g["min"]) <= g["max"], g["name"]
    nodes = [(g["name"], _node_resources(g)) for g in groups]
    for at in ("min", "max"):
        demand = _actor_demand(deps, at)
        for res in ("CPU", "GPU"):
            need = sum(r[res] for _, r in demand)
            have = sum(n[res] * next(g[at] for g in groups if g["name"] == name) for name, n in nodes)
            assert need <= have + 1e-9, f"{rendering}: {res} at {at} replicas: {need} needed, {have} in the groups"
        for name, r in demand:  # every replica fits on one node of some group
            assert any(all(r[k] <= n[k] for k in r) for _, n in nodes), name


# ---- consistency across the documents --------------------------------------------------------------------------------
@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_ray_pods_share_env_storage_and_ports_the_other_documents_use(rendered, rendering):
    docs = rendered[rendering]
    groups = _groups(_rayservice(docs))
    containers = [c for g in groups for c in g["containers"]]
    for key in ("env", "envFrom", "volumeMounts"):
        assert len({json.dumps(c.get(key), sort_keys=True) for c in containers}) == 1, key
    vols = {json.dumps(g["spec"]["template"]["spec"]["volumes"], sort_keys=True) for g in groups}
    assert len(vols) == 1
    secrets = {e["secretRef"]["name"] for c in containers for e in c.get("envFrom", [])}
    assert secrets == {"synthrad-api-keys"}

    # every pod exposes the ports the monitors, the NetworkPolicy and the gRPC Service name
    port_sets = [{(p.get("name"), p["containerPort"]) for p in c["ports"]} for c in containers]
    common = set.intersection(*port_sets)
    names, numbers = {n for n, _ in common}, {p for _, p in common}
    pm = next(d for d in docs if d["kind"] == "PodMonitor")
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= names
    grpc = next(d for d in docs if d["kind"] == "Service")
    assert {p["targetPort"] for p in grpc["spec"]["ports"]} <= numbers | names
    np_ = next(d for d in docs if d["kind"] == "NetworkPolicy")
    np_ports = {p["port"] for rule in np_["spec"]["ingress"] for p in rule.get("ports", [])}
    all_ports = {p for s in port_sets for _, p in s}
    assert np_ports <= all_ports
    assert np_["spec"]["podSelector"]["matchLabels"] == pm["spec"]["selector"]["matchLabels"]

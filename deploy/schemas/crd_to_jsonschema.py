"""Convert one version of a Kubernetes CRD's ``openAPIV3Schema`` into a JSON Schema (draft 2020-12) file.

This is what openapi2jsonschema / kubeconform do with CRDs, done offline and reproducibly so that the vendored
``*.schema.json`` files here can be regenerated from the vendored CRD YAML::

    python deploy/schemas/crd_to_jsonschema.py deploy/schemas/ray.io_rayservices.yaml v1 \
        deploy/schemas/rayservice-ray.io-v1.schema.json

The rules (each one is a structural-schema extension of Kubernetes, see
https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/):

* ``x-kubernetes-int-or-string: true`` -> ``oneOf: [{type: string}, {type: integer}]`` (the ``anyOf`` that
  controller-gen writes beside it is dropped; a ``pattern``, e.g. the one of ``resource.Quantity``, is kept: in JSON
  Schema it applies to strings only, as in Kubernetes).
* ``x-kubernetes-preserve-unknown-fields: true`` -> the object keeps accepting unknown fields (no
  ``additionalProperties: false`` is added there).
* ``nullable: true`` -> ``null`` is added to the ``type``.
* ``required``, ``enum``, ``type``, ``format``, ``pattern``, ``minimum``/``maximum``, ``minLength``/``maxLength``,
  ``items``, ``properties``, ``additionalProperties``, ``default`` are kept as they are (they mean the same in JSON
  Schema; ``default`` is an annotation there).
* **strict** (on by default, like ``kubeconform -strict``): every object that lists ``properties`` and has neither
  ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``, so an
  unknown field is an error -- as with ``kubectl apply``'s default (``Strict``) server-side field validation, instead
  of being pruned silently. ``--no-strict`` leaves them open.
* every other ``x-kubernetes-*`` key is dropped: list/map types (``x-kubernetes-list-type``, ``-list-map-keys``,
  ``-map-type``) and the CEL rules (``x-kubernetes-validations``) have no JSON Schema equivalent.

Only the standard library and PyYAML are used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: OpenAPI v3 keys that are copied as they are (everything else that is not handled below is an error, so a new
#: construct in a future CRD is noticed instead of silently mistranslated)
PLAIN_KEYS = {
    "type", "format", "enum", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
    "required", "default", "description", "title", "example", "multipleOf",
}
#: Kubernetes extensions without a JSON Schema meaning (list/map merge semantics, CEL rules, embedded resources)
DROPPED_KEYS = {
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations",
    "x-kubernetes-embedded-resource",
}


def convert(node: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """The JSON Schema of one OpenAPI v3 (structural CRD) schema node."""
    if not isinstance(node, dict):
        raise TypeError(f"schema node is not a mapping: {node!r}")
    if node.get("x-kubernetes-int-or-string"):
        out: dict[str, Any] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        if "pattern" in node:
            out["pattern"] = node["pattern"]
        return out
    out = {}
    for key, value in node.items():
        if key in PLAIN_KEYS:
            out[key] = value
        elif key == "properties":
            out[key] = {name: convert(sub, strict) for name, sub in value.items()}
        elif key == "items":
            out[key] = convert(value, strict)
        elif key == "additionalProperties":
            out[key] = value if isinstance(value, bool) else convert(value, strict)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [convert(sub, strict) for sub in value]
        elif key == "not":
            out[key] = convert(value, strict)
        elif key in ("nullable", "x-kubernetes-preserve-unknown-fields") or key in DROPPED_KEYS:
            pass
        else:
            raise ValueError(f"no translation for the schema key {key!r}")
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (strict and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """``spec.versions[name=version].schema.openAPIV3Schema`` of a CRD (it must be served)."""
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError("not an apiextensions.k8s.io/v1 CustomResourceDefinition")
    hits = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if len(hits) != 1:
        raise ValueError(f"CRD {crd['metadata']['name']} has no version {version!r}")
    if not hits[0].get("served", False):
        raise ValueError(f"version {version!r} of {crd['metadata']['name']} is not served")
    return hits[0]["schema"]["openAPIV3Schema"]


def crd_to_jsonschema(crd: dict[str, Any], version: str, strict: bool = True) -> dict[str, Any]:
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    schema = convert(crd_version_schema(crd, version), strict)
    return {
        "$schema": DRAFT,
        "$comment": (f"GENERATED by deploy/schemas/crd_to_jsonschema.py from the {kind} CRD "
                     f"({crd['metadata']['name']}, version {version}{', strict' if strict else ''}); do not edit."),
        "title": f"{kind} ({group}/{version})",
        **schema,
    }


def render(schema: dict[str, Any]) -> str:
    """The file text: compact per line but diffable (one key per line, 1-space indent), newline-terminated."""
    return json.dumps(schema, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("crd", type=Path, help="CRD YAML file (one CustomResourceDefinition)")
    p.add_argument("version", help="the spec.versions[].name to convert, e.g. v1")
    p.add_argument("output", type=Path, nargs="?", help="JSON Schema file to write (default: stdout)")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="do not add additionalProperties: false (unknown fields allowed)")
    p.add_argument("--check", action="store_true", help="do not write: exit 1 if OUTPUT differs from the result")
    args = p.parse_args(argv)
    crd = yaml.safe_load(args.crd.read_text(encoding="utf-8"))
    text = render(crd_to_jsonschema(crd, args.version, args.strict))
    if args.check:
        if args.output is None:
            p.error("--check needs OUTPUT")
        same = args.output.exists() and args.output.read_text(encoding="utf-8") == text
        if not same:
            print(f"{args.output} is not what {args.crd} gives; regenerate it", file=sys.stderr)
        return 0 if same else 1
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

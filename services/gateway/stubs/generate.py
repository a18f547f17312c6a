"""Regenerate the committed protobuf/gRPC stubs of :mod:`services.gateway.stubs` from ``protos/synthrad/v1``.

    python -m services.gateway.stubs.generate              # rewrite the stubs in this package
    python -m services.gateway.stubs.generate --out DIR    # write them into DIR instead
    python -m services.gateway.stubs.generate --check      # exit 1 (naming them) when the committed stubs are stale

``grpc_tools.protoc`` (a dev extra) writes ``synthrad/v1/<name>_pb2.py``, ``_pb2.pyi`` and ``_pb2_grpc.py``,
whose imports say ``from synthrad.v1 import ...`` (the proto package's path). They are rewritten to import from
this package, and their message classes are registered under this package's module names (so messages pickle
and print with the path they are imported by). The protos keep their names (``synthrad/v1/<name>.proto``, proto
package ``synthrad.v1``): those are what the wire, gRPC reflection and the descriptor pool see. A proto without a
``service`` gets no ``_pb2_grpc.py`` (it would hold nothing but a version check).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = ROOT / "protos"
PROTO_DIR = "synthrad/v1"  # the protos' folder under PROTO_ROOT = their proto package, dots for slashes
PACKAGE = "services.gateway.stubs"
HERE = Path(__file__).resolve().parent
#: the generated files; everything else in this folder (``__init__.py``, this module) is written by hand
GENERATED = re.compile(r"^\w+_pb2(_grpc)?\.pyi?$")
_SERVICE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)


def protos() -> list[Path]:
    return sorted((PROTO_ROOT / PROTO_DIR).glob("*.proto"))


def _rewrite(text: str) -> str:
    src_mod, src_path = PROTO_DIR.replace("/", "."), PROTO_DIR
    dst_path = PACKAGE.replace(".", "/")
    text = re.sub(rf"^from {re.escape(src_mod)} import ", f"from {PACKAGE} import ", text, flags=re.MULTILINE)
    text = re.sub(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, '){re.escape(src_mod)}\.", rf"\g<1>{PACKAGE}.", text)
    # the version check's message names the generated file
    return re.sub(rf"generated code in {re.escape(src_path)}/", f"generated code in {dst_path}/", text)


def render() -> dict[str, bytes]:
    """file name -> content of every generated stub, as this package commits them."""
    from importlib.resources import files

    from grpc_tools import protoc

    sources = protos()
    if not sources:
        raise SystemExit(f"no .proto files in {PROTO_ROOT / PROTO_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        # protoc names each file by its path under PROTO_ROOT (synthrad/v1/common.proto), so the generated
        # files do not depend on where the repo lives
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{files('grpc_tools') / '_proto'}",
                f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *map(str, sources)]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed (exit {rc})")
        out: dict[str, bytes] = {}
        for proto in sources:
            stem = proto.stem
            names = [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
            if _SERVICE.search(proto.read_text()):
                names.append(f"{stem}_pb2_grpc.py")
            for name in names:
                out[name] = _rewrite((Path(tmp) / PROTO_DIR / name).read_text()).encode()
    return out


def committed(folder: Path = HERE) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and GENERATED.match(p.name)}


def stale(folder: Path = HERE) -> list[str]:
    """Why the stubs in ``folder`` differ from a regeneration (empty when they are fresh)."""
    fresh, have = render(), committed(folder)
    out = [f"{n}: missing" for n in sorted(set(fresh) - set(have))]
    out += [f"{n}: not generated from any proto (remove it)" for n in sorted(set(have) - set(fresh))]
    out += [f"{n}: stale" for n in sorted(set(fresh) & set(have)) if fresh[n] != have[n]]
    return out


def write(folder: Path = HERE) -> list[Path]:
    """Write the stubs into ``folder`` (removing generated files no proto makes any more)."""
    folder.mkdir(parents=True, exist_ok=True)
    fresh = render()
    for name in set(committed(folder)) - set(fresh):
        (folder / name).unlink()
    paths = []
    for name, data in sorted(fresh.items()):
        path = folder / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.gateway.stubs.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write the stubs into (default: this package)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when the stubs in --out are stale")
    args = ap.parse_args(argv)
    if args.check:
        problems = stale(args.out)
        for p in problems:
            print(f"{args.out / p}", file=sys.stderr)
        if problems:
            print("run `python -m services.gateway.stubs.generate` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

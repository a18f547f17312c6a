"""One GPU window: train every shipped generator at once for a wall-clock budget and pack what comes back.

GPU time comes in short windows (about 15 minutes of one H200). A window continues each model from the
training state shipped with it (:mod:`.state`), trains all of them concurrently on the one GPU until the budget
minus a safety margin, and writes the exports (fp16 weights, training state, descriptor, grid, logs) as a few
shards of at most 15.9 MB plus one index — the device returns at most 8 files of 16 MB. Evaluation (FID /
precision / recall against held-out images, conditional agreement, cards) is a CPU step afterwards.

    python -m services.generator.train.window run --minutes 14 --out "$OUT"          # on the GPU machine
    python -m services.generator.train.window unpack OUT_FOLDER --to runs/window-1     # back here
    python -m services.generator.train.finalize --from runs/window-1/<model_id> --model-id <model_id> ...

The plan (``window_plan.json`` beside this module, or ``--plan``) lists the jobs: model id, family, data,
resolution, batch, architecture. A job whose model id is registered with a training state continues it
(``--resume-from <id> --replace``: the window's export takes that id's place once finalized); otherwise it
starts fresh under that id. ``--tiny`` swaps in tiny networks (a CPU rehearsal of the whole flow).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PLAN = Path(__file__).with_name("window_plan.json")
SHARD_BYTES = 15_900_000  # the device returns files of at most 16 MB
MAX_FILES = 8
INDEX = "window.json"
TINY = {
    "stylegan2": ["--channel-base", "128", "--channel-max", "16", "--mapping-layers", "1"],
    "ddpm": ["--preset", "tiny", "--grid-seeds", "2", "--grid-steps", "4"],
}


@dataclass
class Job:
    model_id: str
    family: str  # stylegan2 | ddpm
    data: str  # folder under --data-root, or an absolute path
    layout: str = "nih"
    views: str = "all"
    resolution: int = 64
    batch: int = 64
    args: list[str] = field(default_factory=list)  # more ``synthrad train <family>`` options (architecture ...)

    @property
    def command(self) -> str:
        return "stylegan2" if self.family == "stylegan2" else "diffusion"


def load_plan(path: str | os.PathLike = PLAN) -> list[Job]:
    raw = json.loads(Path(path).read_text())
    jobs = [Job(**j) for j in raw["jobs"]]
    ids = [j.model_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"plan {path} lists a model id twice: {ids}")
    for j in jobs:
        if j.family not in ("stylegan2", "ddpm"):
            raise ValueError(f"plan job {j.model_id}: family {j.family!r} is not trainable (stylegan2, ddpm)")
    return jobs


def continues(job: Job) -> bool:
    """Whether ``job.model_id`` is registered with a training state to continue."""
    from services.generator import registry

    try:
        desc, _ = registry.resolve(job.model_id)
    except registry.GeneratorError:
        return False
    return desc.get("family") == job.family and bool(desc.get("training_state"))


def train_argv(job: Job, out: Path, minutes: float, data_root: Path, device: str, tiny: bool,
               threads: int = 1) -> list[str]:
    data = Path(job.data) if Path(job.data).is_absolute() else data_root / job.data
    argv = [sys.executable, "-m", "synthrad.cli.main", "train", job.command, "--data", str(data), "--layout",
            job.layout, "--views", job.views, "--out", str(out), "--batch", str(job.batch), "--device", device,
            "--max-minutes", f"{minutes:.3f}", "--no-progress", "--model-id", job.model_id, "--overwrite",
            "--threads", str(threads)]
    if job.family == "stylegan2":
        argv += ["--kimg", "100000", "--snap-minutes", "3"]
    else:
        argv += ["--max-steps", "100000000", "--ckpt-every", "2000", "--grid-every", "0"]
    if continues(job) and not tiny:
        argv += ["--resume-from", job.model_id, "--replace"]
    else:
        argv += ["--resolution", str(job.resolution), *job.args]
        if tiny:
            argv += TINY[job.family]
    return argv


def export_dir(job: Job, run: Path) -> Path:
    return run / "export" if job.family == "stylegan2" else run


def _tail_jsonl(path: Path, n: int = 3) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[-n:]
    return [json.loads(x) for x in lines if x.strip()]


# ---- packing ------------------------------------------------------------------------------------------------
def pack(files: dict[str, Path], out: Path, index: dict[str, Any], shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write ``files`` (name -> path) into ``window-NN.bin`` shards of at most ``shard_bytes`` (a file larger
    than a shard spans several) and ``window.json`` (each file's sha256, size and pieces) last."""
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    entries: dict[str, Any] = {}
    cur = None
    used = 0

    def new_shard():
        nonlocal cur, used
        if cur is not None:
            cur.close()
        path = out / f"window-{len(shards):02d}.bin"
        shards.append(path)
        cur, used = open(path.with_suffix(".bin.tmp"), "wb"), 0

    new_shard()
    for name, path in sorted(files.items()):
        data = path.read_bytes()
        pieces, pos = [], 0
        while pos < len(data) or not pieces:
            if used >= shard_bytes:
                new_shard()
            take = min(len(data) - pos, shard_bytes - used)
            cur.write(data[pos:pos + take])
            pieces.append({"shard": shards[-1].name, "offset": used, "bytes": take})
            used += take
            pos += take
            if not data:
                break
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "pieces": pieces}
    cur.close()
    for s in shards:
        os.replace(s.with_suffix(".bin.tmp"), s)
    if len(shards) + 1 > MAX_FILES:
        raise RuntimeError(f"the window's files need {len(shards)} shards + the index, more than the {MAX_FILES} "
                           "files a device call returns; train fewer models per window")
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps({**index, "files": entries}, indent=2))
    os.replace(tmp, out / INDEX)
    return shards


def unpack(src: Path, dest: Path) -> dict[str, Any]:
    """Restore the packed files under ``dest`` (verifying each sha256); returns the index."""
    index = json.loads((src / INDEX).read_text())
    for name, e in index["files"].items():
        buf = bytearray()
        for p in e["pieces"]:
            with open(src / p["shard"], "rb") as fh:
                fh.seek(p["offset"])
                buf += fh.read(p["bytes"])
        if hashlib.sha256(buf).hexdigest() != e["sha256"] or len(buf) != e["bytes"]:
            raise ValueError(f"{name}: the packed bytes do not match their sha256 (shard missing or truncated)")
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(bytes(buf))
        os.replace(tmp, target)
    (dest / INDEX).write_text(json.dumps(index, indent=2))
    return index


# ---- the window ----------------------------------------------------------------------------------------------
@dataclass
class JobResult:
    model_id: str
    continued: bool
    exit_code: int | None
    wall_s: float
    files: list[str]
    summary: dict[str, Any]
    last_log: list[dict]


def run_window(jobs: list[Job], minutes: float, margin: float, out: Path, work: Path, data_root: Path,
               device: str = "auto", tiny: bool = False) -> dict[str, Any]:
    """Train ``jobs`` concurrently for ``minutes - margin`` (each trainer's own budget, which holds its final
    checkpoint, grid and export), then pack the exports into ``out``."""
    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    train_minutes = minutes - margin
    if train_minutes <= 0:
        raise ValueError(f"--minutes {minutes} leaves nothing after the {margin} min margin")
    procs = {}
    # the CPU cores are shared out: more threads than cores makes every trainer wait on the others' barriers
    threads = max(1, (os.cpu_count() or 1) // max(1, len(jobs)))
    for job in jobs:
        run = work / job.model_id
        argv = train_argv(job, run, train_minutes, data_root, device, tiny, threads)
        log = open(work / f"{job.model_id}.log", "w")
        print(f"[window] {job.model_id}: {' '.join(argv[2:])}", flush=True)
        procs[job.model_id] = (job, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log,
                               "--resume-from" in argv)
    deadline = t0 + (minutes - margin / 2) * 60  # past this a trainer is stopped: its export would not come back
    results: list[JobResult] = []
    for mid, (job, proc, log, cont) in procs.items():
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
        run = work / mid
        exp = export_dir(job, run)
        files = [p for p in (exp / f"{mid}.json", exp / f"{mid}.safetensors", exp / f"{mid}.train.safetensors",
                             exp / f"{mid}-samples.png", exp / f"{mid}-grid.png", run / "summary.json",
                             run / "log.jsonl", work / f"{mid}.log") if p.exists()]
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        results.append(JobResult(mid, cont, code, round(time.monotonic() - t0, 1), [str(p) for p in files], summary,
                                 _tail_jsonl(run / "log.jsonl")))
        print(f"[window] {mid}: exit {code}, {len(files)} files, {summary.get('step', '?')} steps", flush=True)
    packed = {f"{r.model_id}/{Path(f).name}": Path(f) for r in results for f in r.files}
    index = {"minutes": minutes, "margin_minutes": margin, "device": _device_name(device), "tiny": tiny,
             "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "jobs": [asdict(r) | {"files": [Path(f).name for f in r.files]} for r in results]}
    pack(packed, out, index)
    index["wall_s"] = round(time.monotonic() - t0, 1)
    return index


def _device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.generator.train.window", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train every planned model for --minutes and pack the exports into --out")
    r.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the whole window")
    r.add_argument("--margin", type=float, default=1.5, help="minutes kept back for packing and the way back")
    r.add_argument("--out", required=True, help="folder the device returns ($OUT)")
    r.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    r.add_argument("--plan", default=str(PLAN))
    r.add_argument("--only", default=None, help="comma-separated model ids of the plan to train")
    r.add_argument("--data-root", default=None, help="folder holding the plan's data folders "
                                                     "(default: ../shared/data beside the repository)")
    r.add_argument("--device", default="auto")
    r.add_argument("--tiny", action="store_true", help="tiny networks: a CPU rehearsal of the window")
    u = sub.add_parser("unpack", help="restore a window's files (hash-checked) into per-model folders")
    u.add_argument("src")
    u.add_argument("--to", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "unpack":
        index = unpack(Path(a.src), Path(a.to))
        for j in index["jobs"]:
            print(f"{j['model_id']}: exit {j['exit_code']}, {j['summary'].get('step', '?')} steps -> "
                  f"python -m services.generator.train.finalize --from {Path(a.to) / j['model_id']} "
                  f"--model-id {j['model_id']}")
        return 0
    import tempfile

    jobs = load_plan(a.plan)
    if a.only:
        keep = {s.strip() for s in a.only.split(",") if s.strip()}
        jobs = [j for j in jobs if j.model_id in keep]
    root = Path(__file__).resolve().parents[3]
    data_root = Path(a.data_root) if a.data_root else root.parent / "shared" / "data"
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="synthrad-window-"))
    index = run_window(jobs, a.minutes, a.margin, Path(a.out), work, data_root, a.device, a.tiny)
    print(json.dumps({"wall_s": index["wall_s"], "jobs": [{k: j[k] for k in ("model_id", "exit_code", "continued")}
                                                         for j in index["jobs"]]}, indent=2))
    return 0 if all(j["exit_code"] == 0 for j in index["jobs"]) else 1


if __name__ == "__main__":
    sys.exit(main())

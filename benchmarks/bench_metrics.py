"""Metrics benchmark: end-to-end FID vs pytorch-fid and torch-fidelity (same images, same weights, same run),
the Fréchet step vs ``scipy.linalg.sqrtm``, and (``--device cuda``) fp16 / compiled extraction vs fp32.

CPU (this repo's dev machine; needs the dev extras pytorch-fid and torch-fidelity):

    .venv/bin/python benchmarks/bench_metrics.py --n 2000 --threads 2 --bf16 --out benchmarks/bench_metrics_cpu.json
    .venv/bin/python benchmarks/bench_metrics.py --interleaved --m 200 --rounds 3 --out benchmarks/bench_metrics_cpu_interleaved.json

    real = first n/2 Kermany NORMAL, synthetic = first n/2 Kermany PNEUMONIA (224 px JPEG) from ../shared/data.
    All three tools get the same weights: the fid-helper TorchScript file mapped to a pytorch-fid state dict
    (pytorch-fid's download monkeypatched to it; torch-fidelity via feature_extractor_weights_path).

GPU (``scripts/gpu/metrics.sh``; needs the package's dependencies, not pytorch-fid / torch-fidelity):

    python benchmarks/bench_metrics.py --device cuda --weights W.pth --real DIR --synthetic DIR --out OUT.json

    fp32 (TF32 off) vs TF32 vs fp16 (channels_last) vs fp16 + torch.compile vs bf16: images/s of the extractor (preprocessing on
    the GPU included) and the FID of real vs synthetic with each, relative difference to fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"  # --data


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def frechet_step(fr: np.ndarray, fs: np.ndarray) -> dict:
    """Time the Fréchet step alone on 2048-d statistics: ours (symmetric eigen) vs scipy.linalg.sqrtm."""
    from scipy import linalg

    from services.metrics.measures.fid import GaussianStats, frechet_distance, frechet_distance_features

    s1, s2 = GaussianStats.from_features(fr), GaussianStats.from_features(fs)
    out: dict = {"n_real": len(fr), "n_synthetic": len(fs), "dims": fr.shape[1]}
    t = time.perf_counter()
    ours = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    out["ours_eigh_s"] = time.perf_counter() - t
    t = time.perf_counter()
    gram = frechet_distance_features(fr, fs, warn=False, method="gram")
    out["ours_gram_s"] = time.perf_counter() - t
    t = time.perf_counter()
    covmean, _ = linalg.sqrtm(s1.sigma.dot(s2.sigma), disp=False)
    imag = float(np.abs(np.imag(covmean)).max()) if np.iscomplexobj(covmean) else 0.0
    covmean = np.real(covmean)
    diff = s1.mu - s2.mu
    scipy_fd = float(diff @ diff + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * np.trace(covmean))
    out["scipy_sqrtm_s"] = time.perf_counter() - t
    out.update(ours_fd=ours, ours_gram_fd=gram, scipy_fd=scipy_fd, scipy_max_imag=imag,
               rel_diff_eigh_vs_scipy=_rel(ours, scipy_fd), rel_diff_gram_vs_eigh=_rel(gram, ours),
               speedup_eigh_vs_sqrtm=out["scipy_sqrtm_s"] / out["ours_eigh_s"],
               speedup_gram_vs_sqrtm=out["scipy_sqrtm_s"] / out["ours_gram_s"])
    return out


def _flat_links(files: list[Path], d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        os.symlink(f, d / f"{i:05d}{f.suffix}")
    return d


def bench_cpu(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from services.metrics.api import score
    from services.metrics.extractors import inception as inc

    ker = SHARED / "kermany-pneumonia-224" / "train"
    half = args.n // 2
    normal = sorted((ker / "NORMAL").glob("*.jpeg"))[:half]
    pneu = sorted((ker / "PNEUMONIA").glob("*.jpeg"))[:half]
    if len(normal) < half or len(pneu) < half:
        raise SystemExit(f"need {half} NORMAL and PNEUMONIA images under {ker}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    real_dir = _flat_links(normal, tmp / "real")
    synth_dir = _flat_links(pneu, tmp / "synth")
    pth = inc.export_pytorch_fid_state_dict(tmp / "fid_inception.pth")
    res: dict = {"mode": "cpu", "n_images": 2 * half, "threads": args.threads,
                 "data": "Kermany 224px JPEG: NORMAL (real) vs PNEUMONIA (synthetic)", "weights": str(pth.name),
                 "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                 "loadavg_start": os.getloadavg()[0],
                 "note": "2 shared cores; other jobs' load varies during the run (loadavg_* fields)"}

    # ---- ours (cold: no cache, extractor built inside the timing) -----------------------------------
    t = time.perf_counter()
    ours = score(str(real_dir), str(synth_dir), ["fid"], weights=str(pth), bootstrap=0, cache=False, device="cpu")
    res["ours_s"] = time.perf_counter() - t
    res["loadavg_after_ours"] = os.getloadavg()[0]
    res["ours_fid"] = ours.get("FID").value
    res["ours_timings"] = ours.timings_s
    fr_ours, fs_ours = ours._real.features["inception"], ours._synthetic.features["inception"]
    print(f"ours: FID {res['ours_fid']:.6f} in {res['ours_s']:.1f}s", flush=True)

    # ---- ours, bfloat16 extraction (AMX on this CPU) ----------------------------------------------
    if args.bf16:
        t = time.perf_counter()
        o16 = score(str(real_dir), str(synth_dir), ["fid"], weights=str(pth), bootstrap=0, cache=False, device="cpu",
                    dtype="bfloat16")
        res["ours_bf16_s"] = time.perf_counter() - t
        res["loadavg_after_ours_bf16"] = os.getloadavg()[0]
        res["ours_bf16_fid"] = o16.get("FID").value
        res["ours_bf16_fid_rel_diff_vs_fp32"] = _rel(res["ours_bf16_fid"], res["ours_fid"])
        print(f"ours bf16: FID {res['ours_bf16_fid']:.6f} in {res['ours_bf16_s']:.1f}s", flush=True)

    # ---- pytorch-fid (its pipeline: model, get_activations per folder, mean/cov, calculate_frechet_distance) ----
    import pytorch_fid.fid_score as pfs
    import pytorch_fid.inception as pfi

    pfi.load_state_dict_from_url = lambda *a, **k: torch.load(pth)
    try:
        workers = min(len(os.sched_getaffinity(0)), 8)
    except AttributeError:  # pragma: no cover
        workers = min(os.cpu_count() or 1, 8)
    t = time.perf_counter()
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to("cpu")
    acts = []
    for d in (real_dir, synth_dir):
        files = sorted(d.glob("*.jpeg"))
        acts.append(pfs.get_activations(files, model, 50, 2048, "cpu", workers))
    stats = [(a.mean(0), np.cov(a, rowvar=False)) for a in acts]
    res["pytorch_fid_fid"] = float(pfs.calculate_frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))
    res["pytorch_fid_s"] = time.perf_counter() - t
    res["loadavg_after_pytorch_fid"] = os.getloadavg()[0]
    res["pytorch_fid_workers"] = workers
    print(f"pytorch-fid: FID {res['pytorch_fid_fid']:.6f} in {res['pytorch_fid_s']:.1f}s", flush=True)

    # ---- torch-fidelity ------------------------------------------------------------------------------
    import torch_fidelity

    t = time.perf_counter()
    tf = torch_fidelity.calculate_metrics(input1=str(synth_dir), input2=str(real_dir), fid=True, cuda=False, cache=False,
                                          verbose=False, feature_extractor_weights_path=str(pth), batch_size=64,
                                          samples_find_ext="jpeg")
    res["torch_fidelity_s"] = time.perf_counter() - t
    res["loadavg_after_torch_fidelity"] = os.getloadavg()[0]
    res["torch_fidelity_fid"] = float(tf["frechet_inception_distance"])
    print(f"torch-fidelity: FID {res['torch_fidelity_fid']:.6f} in {res['torch_fidelity_s']:.1f}s", flush=True)

    # ---- agreement --------------------------------------------------------------------------------
    from services.metrics.measures.fid import frechet_distance_features

    res["speedup_vs_pytorch_fid"] = res["pytorch_fid_s"] / res["ours_s"]
    res["speedup_vs_torch_fidelity"] = res["torch_fidelity_s"] / res["ours_s"]
    res["fid_rel_diff_vs_pytorch_fid_end_to_end"] = _rel(res["ours_fid"], res["pytorch_fid_fid"])
    res["fid_rel_diff_vs_torch_fidelity_end_to_end"] = _rel(res["ours_fid"], res["torch_fidelity_fid"])
    same = frechet_distance_features(acts[0], acts[1], warn=False)
    res["same_features_ours_fd"] = same
    res["same_features_rel_diff_vs_pytorch_fid"] = _rel(same, res["pytorch_fid_fid"])
    res["feature_max_rel_diff_vs_pytorch_fid"] = float(
        max(np.abs(fr_ours - acts[0]).max(), np.abs(fs_ours - acts[1]).max()) / np.abs(acts[0]).max()
    )
    res["frechet_step"] = frechet_step(acts[0], acts[1])
    if args.out:
        np.savez(Path(args.out).with_suffix(".features.npz"), real=acts[0].astype(np.float32), synthetic=acts[1].astype(np.float32))
    return res


def bench_interleaved(args) -> dict:
    """Load-robust ratios on a shared machine: each tool scores the same M-vs-M image folders end to end,
    tools interleaved in rotating order for several rounds; the minimum time per tool is reported.
    Also the Fréchet step (ours eigen / ours n×n / scipy sqrtm), minimum of the rounds."""
    import torch

    torch.set_num_threads(args.threads)
    import pytorch_fid.fid_score as pfs
    import pytorch_fid.inception as pfi
    import torch_fidelity

    from services.metrics.api import score
    from services.metrics.extractors import inception as inc

    ker = SHARED / "kermany-pneumonia-224" / "train"
    m = args.m
    tmp = Path(tempfile.mkdtemp(prefix="bench_metrics_il_"))
    real_dir = _flat_links(sorted((ker / "NORMAL").glob("*.jpeg"))[-m:], tmp / "real")
    synth_dir = _flat_links(sorted((ker / "PNEUMONIA").glob("*.jpeg"))[-m:], tmp / "synth")
    pth = inc.export_pytorch_fid_state_dict(tmp / "fid_inception.pth")
    pfi.load_state_dict_from_url = lambda *a, **k: torch.load(pth)
    workers = min(len(os.sched_getaffinity(0)), 8)

    def ours() -> float:
        return score(str(real_dir), str(synth_dir), ["fid"], weights=str(pth), bootstrap=0, cache=False, device="cpu").get("FID").value

    def ours_bf16() -> float:
        return score(str(real_dir), str(synth_dir), ["fid"], weights=str(pth), bootstrap=0, cache=False, device="cpu",
                     dtype="bfloat16").get("FID").value

    def pytorch_fid() -> float:
        model = pfi.InceptionV3([3])
        st = []
        for d in (real_dir, synth_dir):
            a = pfs.get_activations(sorted(d.glob("*.jpeg")), model, 50, 2048, "cpu", workers)
            st.append((a.mean(0), np.cov(a, rowvar=False)))
        return float(pfs.calculate_frechet_distance(st[0][0], st[0][1], st[1][0], st[1][1]))

    def torch_fid() -> float:
        r = torch_fidelity.calculate_metrics(input1=str(synth_dir), input2=str(real_dir), fid=True, cuda=False, cache=False,
                                             verbose=False, feature_extractor_weights_path=str(pth), batch_size=64,
                                             samples_find_ext="jpeg")
        return float(r["frechet_inception_distance"])

    import contextlib
    import io as _io

    tools = {"ours": ours, "ours_bf16": ours_bf16, "pytorch_fid": pytorch_fid, "torch_fidelity": torch_fid}
    times: dict[str, list[float]] = {k: [] for k in tools}
    fids: dict[str, float] = {}
    names = list(tools)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t = time.perf_counter()
            with contextlib.redirect_stderr(_io.StringIO()):
                fids[name] = tools[name]()
            times[name].append(time.perf_counter() - t)
            print(f"round {r} {name}: {times[name][-1]:.1f}s load {os.getloadavg()[0]:.1f}", flush=True)
    best = {k: min(v) for k, v in times.items()}
    out = {"m_per_set": m, "rounds": args.rounds, "times_s": times, "min_s": best, "fid": fids,
           "speedup_vs_pytorch_fid": best["pytorch_fid"] / best["ours"],
           "speedup_vs_torch_fidelity": best["torch_fidelity"] / best["ours"],
           "bf16_speedup_vs_pytorch_fid": best["pytorch_fid"] / best["ours_bf16"],
           "bf16_speedup_vs_torch_fidelity": best["torch_fidelity"] / best["ours_bf16"],
           "bf16_fid_rel_diff": _rel(fids["ours_bf16"], fids["ours"])}
    # Fréchet step, min of rounds, on 2048-d features of the full first run if given, else random features
    if args.features_from:
        z = np.load(args.features_from)
        fr, fs = z["real"], z["synthetic"]
    else:
        rng = np.random.default_rng(0)
        fr, fs = rng.random((1000, 2048)), rng.random((1000, 2048)) + 0.01
    steps = [frechet_step(fr, fs) for _ in range(args.rounds)]
    fstep = dict(steps[0])
    for key in ("ours_eigh_s", "ours_gram_s", "scipy_sqrtm_s"):
        fstep[key] = min(s[key] for s in steps)
    fstep["speedup_eigh_vs_sqrtm"] = fstep["scipy_sqrtm_s"] / fstep["ours_eigh_s"]
    fstep["speedup_gram_vs_sqrtm"] = fstep["scipy_sqrtm_s"] / fstep["ours_gram_s"]
    out["frechet_step_min"] = fstep
    return out


def bench_cuda(args) -> dict:
    import torch

    from services.metrics.extractors.inception import InceptionExtractor, sha256_file
    from services.metrics.measures.fid import frechet_distance_features
    from services.metrics.sources import FolderSource

    real = [im for _, im, _ in FolderSource(args.real)]
    synth = [im for _, im, _ in FolderSource(args.synthetic)]
    dev = args.gpu_device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    res: dict = {"mode": dev, "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (smoke test)",
                 "torch": torch.__version__,
                 "n_real": len(real), "n_synthetic": len(synth), "weights": str(args.weights),
                 "weights_transport": args.weights_transport}
    # throughput set: the real images tiled to args.n, kept on the GPU as uint8-like floats (H, W)
    shape = real[0].shape
    pool = np.stack([im for im in real if im.shape == shape])
    tiles = torch.from_numpy(np.resize(pool, (args.n, *shape))).to(dev)
    variants = [("fp32", dict(dtype="float32")), ("tf32", dict(dtype="float32", allow_tf32=True)),
                ("fp16", dict(dtype="float16")),
                ("fp16_compile", dict(dtype="float16", compile=True)), ("bf16", dict(dtype="bfloat16"))]
    if args.skip:
        variants = [v for v in variants if v[0] not in args.skip.split(",")]
    feats_ref = None
    for name, opts in variants:
        try:
            t0 = time.perf_counter()
            trust = sha256_file(args.weights) if args.trust_weights else None
            ex = InceptionExtractor(args.weights, device=dev, expected_sha256=trust, **opts)
            fr = ex.extract(real, batch_size=args.batch)
            fs = ex.extract(synth, batch_size=args.batch)
            warm_s = time.perf_counter() - t0
            fid = frechet_distance_features(fr, fs, warn=False)

            def run_all() -> None:
                for s in range(0, args.n, args.batch):
                    x = tiles[s : s + args.batch].unsqueeze(1).float()
                    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                    ex.forward_preprocessed((2 * x - 1).expand(-1, 3, -1, -1))

            run_all()  # warm-up (compile, cudnn autotune)
            sync()
            t = time.perf_counter()
            run_all()
            sync()
            dt = time.perf_counter() - t
            row = {"fid": fid, "images_per_s": args.n / dt, "setup_and_first_pass_s": warm_s}
            if feats_ref is None:
                feats_ref = (fid, fr)
            else:
                row["fid_rel_diff_vs_fp32"] = _rel(fid, feats_ref[0])
                row["feature_max_rel_diff_vs_fp32"] = float(np.abs(fr - feats_ref[1]).max() / np.abs(feats_ref[1]).max())
            res[name] = row
            print(name, json.dumps(row), flush=True)
        except Exception as e:  # noqa: BLE001 - report and continue with the next variant
            res[name] = {"error": f"{type(e).__name__}: {e}"}
            print(name, "failed:", e, flush=True)
    return res


def main() -> None:
    global SHARED
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n", type=int, default=2000, help="CPU: images in total (half real, half synthetic); CUDA: throughput images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="CPU: also time bfloat16 extraction")
    ap.add_argument("--weights", default=None, help="CUDA: Inception weights file (.pth or TorchScript)")
    ap.add_argument("--trust-weights", action="store_true",
                    help="CUDA: accept the weights file by its own sha256 (e.g. the fp16-rounded transport copy)")
    ap.add_argument("--weights-transport", default="float32", help="CUDA: how the weights travelled (recorded)")
    ap.add_argument("--data", default=str(SHARED), help="the shared data folder (Kermany, NIH 64 px)")
    ap.add_argument("--real", default=None, help="CUDA: real images (default DATA/nih-chestxray14-64/train)")
    ap.add_argument("--synthetic", default=None, help="CUDA: synthetic images (default DATA/nih-chestxray14-64/valid)")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--out", default=None)
    ap.add_argument("--interleaved", action="store_true", help="CPU: load-robust interleaved M-vs-M comparison")
    ap.add_argument("--m", type=int, default=200, help="--interleaved: images per set")
    ap.add_argument("--rounds", type=int, default=3, help="--interleaved: rounds (min time per tool)")
    ap.add_argument("--features-from", default=None, help="--interleaved: .npz with real/synthetic features for the Fréchet step")
    ap.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)  # 'cpu' = smoke test of the CUDA path
    ap.add_argument("--skip", default="", help="CUDA: comma list of variants to skip (fp32,tf32,fp16,fp16_compile,bf16)")
    args = ap.parse_args()
    SHARED = Path(args.data)
    args.real = args.real or str(SHARED / "nih-chestxray14-64" / "train")
    args.synthetic = args.synthetic or str(SHARED / "nih-chestxray14-64" / "valid")
    if args.interleaved:
        res = bench_interleaved(args)
    else:
        res = bench_cpu(args) if args.device == "cpu" else bench_cuda(args)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

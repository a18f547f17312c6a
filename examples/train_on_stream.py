"""Train a small pleural-effusion classifier on a stream of freshly generated images (synthrad.stream).

    synthrad serve &                                  # or any synthrad gateway
    python examples/train_on_stream.py --url http://127.0.0.1:8000 --steps 200

Half the stream is "pleural effusion", half "no pleural effusion" (the mix); the labels are the server's
condition codes. Every ``--eval-every`` steps the loss and the accuracy on a fixed held-out stream (other seeds)
are printed; ``--state`` saves the stream position and the model so an interrupted run continues where it
stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from services.common.findings import FINDINGS
from synthrad.stream import StreamingDataset

EFFUSION = FINDINGS.index("pleural_effusion")
MIX = {"pleural effusion": 0.5, "no pleural effusion": 0.5}


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1))


def evaluate(net: nn.Module, loader) -> float:
    net.eval()
    right = total = 0
    with torch.no_grad():
        for x, codes in loader:
            pred = net(x).squeeze(1) > 0
            right += int((pred == (codes[:, EFFUSION] == 1)).sum())
            total += len(x)
    net.train()
    return right / max(total, 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--model", default=None, help="served model id (default: the server's)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16, help="images per request (at most the server's inline limit)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-images", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state", type=Path, default=None, help="checkpoint file: resume from it, save to it")
    args = ap.parse_args(argv)

    common = dict(model=args.model, chunk=args.chunk, api_key=args.api_key)
    train = StreamingDataset(args.url, MIX, seed=args.seed, **common)
    held_out = StreamingDataset(args.url, MIX, seed=10**9 + args.seed, max_images=args.eval_images, **common)
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    step = 0
    if args.state and args.state.exists():
        saved = torch.load(args.state, weights_only=False)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        train.load_state_dict(saved["stream"])
        step = saved["step"]
    loss_fn = nn.BCEWithLogitsLoss()
    eval_loader = torch.utils.data.DataLoader(held_out, batch_size=args.batch_size)
    history = []
    for x, codes in (torch.utils.data.DataLoader(train, batch_size=args.batch_size) if step < args.steps else ()):
        loss = loss_fn(net(x).squeeze(1), (codes[:, EFFUSION] == 1).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(net, eval_loader)
            history.append({"step": step, "loss": round(loss.item(), 4), "held_out_accuracy": round(acc, 4)})
            print(json.dumps(history[-1]), flush=True)
            if args.state:
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                            "stream": train.state_dict(), "step": step}, args.state)
        if step >= args.steps:  # before the loader fetches another batch: the saved position is exact
            break
    return {"steps": step, "history": history, "stream": train.state_dict()}


if __name__ == "__main__":
    main()

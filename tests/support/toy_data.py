"""A tiny in-memory training set for the trainer tests (no data files)."""

from __future__ import annotations

import torch


class ToyXrays(torch.utils.data.Dataset):
    """``n`` random one-channel ``res`` px images in [-1, 1], each with four finding labels drawn from
    ``range(states)``; the same for every instance (seeded)."""

    def __init__(self, n: int = 12, res: int = 16, states: int = 3):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, res, res, generator=g) * 2 - 1
        self.c = torch.randint(0, states, (n, 4), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.c[i]

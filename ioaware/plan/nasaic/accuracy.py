"""The accuracy proxy: a candidate network trained for a few epochs on scikit-learn's bundled digits (offline, 1797
8x8 images), the stand-in for NASAIC's training of each child network on its task's data set.

Two tasks share the images, so the workload has two networks with different jobs: "digits" (which digit, 10
classes) and "rotation" (which of 0/90/180/270 degrees the digit was turned by, 4 classes). The split, the weights
and the batch order are seeded; a result is cached per (task, architecture).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

TASKS = {"digits": 10, "rotation": 4}
EPOCHS = 6  # enough for the proxy to rank widths and kernels on 8x8 images (measured: see README)
SEED = 0


@lru_cache(maxsize=4)
def _data(task: str):
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0  # (1797, 8, 8)
    y = d.target.astype(np.int64)
    if task == "rotation":
        rng = np.random.default_rng(SEED)
        k = rng.integers(0, 4, size=len(x))
        x = np.stack([np.rot90(img, int(r)) for img, r in zip(x, k)])
        y = k.astype(np.int64)
    elif task != "digits":
        raise ValueError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    perm = np.random.default_rng(SEED + 1).permutation(len(x))
    cut = int(0.7 * len(x))
    tr, te = perm[:cut], perm[cut:]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return t(x[tr][:, None]), t(y[tr]), t(x[te][:, None]), t(y[te])


def build(arch: tuple[tuple[int, int], ...], classes: int, in_ch: int = 1):
    """arch: ((filters, kernel), ...); layers 2 and 4 (1-based) halve the resolution, as in space.layers()."""
    import torch.nn as nn

    mods, c = [], in_ch
    for i, (f, k) in enumerate(arch):
        stride = 2 if i in (1, 3) else 1
        mods += [nn.Conv2d(c, f, k, stride=stride, padding=k // 2), nn.BatchNorm2d(f), nn.ReLU()]
        c = f
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*mods)


@lru_cache(maxsize=4096)
def accuracy(task: str, arch: tuple[tuple[int, int], ...], epochs: int = EPOCHS) -> float:
    """Held-out accuracy (30% of the images) after `epochs` of Adam; deterministic for a given torch build."""
    import torch

    xtr, ytr, xte, yte = _data(task)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: several threads only fight each other on a busy 2-core machine
    try:
        return _train(task, arch, epochs, xtr, ytr, xte, yte)
    finally:
        torch.set_num_threads(threads)


def _train(task, arch, epochs, xtr, ytr, xte, yte) -> float:
    import torch

    g = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = build(arch, TASKS[task])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=g).split(128):
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(xte).argmax(1) == yte).float().mean())

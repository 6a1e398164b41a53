"""How far the authors' phase-retrieval measurement is from ours (README, "Measurement models").

    python benchmarks/phase_retrieval_conventions/phase_retrieval_conventions.py

For the same padding size (the authors' int(2.0 / 8 * H)), it prints the relative L2 difference between
the authors' measurement in [0, 1] units, auth(2x - 1) / 2 = |F pad_0(x - 1/2)|, and ours, |F pad_0(x)|:
over the whole spectrum and without the DC bin, on 8 held-out digits (32 px) and on scikit-image's
"camera" photograph (256 px, if scikit-image is installed).
"""
from __future__ import annotations

import torch

from dps.data.digits import digits_split
from dps.operators import PhaseRetrieval


def rel_diff(x: torch.Tensor) -> tuple[float, float]:
    shape = tuple(x.shape[1:])
    authors = PhaseRetrieval.authors(shape)
    ours = PhaseRetrieval(shape, pad=authors.pad)
    a, o = authors(x) / 2, ours(x)
    c = a.shape[-1] // 2
    keep = torch.ones(a.shape[-2:], dtype=torch.bool)
    keep[c, c] = False
    full = float((a - o).flatten(1).norm(dim=1).div(o.flatten(1).norm(dim=1)).mean())
    no_dc = float((a - o)[..., keep].flatten(1).norm(dim=1).div(o[..., keep].flatten(1).norm(dim=1)).mean())
    return full, no_dc


x, _ = digits_split("held_out")
print("held-out digits (8, 32 px): relative L2 difference %.3f, without DC %.3f" % rel_diff(x[:8].double()))
try:
    from skimage import data
    from skimage.transform import resize

    cam = torch.from_numpy(resize(data.camera(), (256, 256), anti_aliasing=True))[None, None]
    print("camera (256 px): relative L2 difference %.3f, without DC %.3f" % rel_diff(cam.double()))
except ImportError:
    print("camera: scikit-image is not installed")

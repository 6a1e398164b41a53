"""The lean VJP of our UNet against autograd's own layers: floor time (forward + VJP to x), peak tensor memory
and the largest gradient difference, with and without block checkpointing.

    python benchmarks/lean_vjp/lean_vjp.py [--model default | --arch ffhq256] [--size 64,128] [--repeats 5] [--threads 2]
        [--device cuda]

Times are medians of interleaved repeats (lean, plain, lean, plain, ...): run it on idle cores. Memory is
the peak of the tensors allocated during one floor (``dps.bench.speed.PeakMemory``: CUDA's allocator or the
CPU profiler's allocation events).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dps.bench.speed import PeakMemory, random_prior
from dps.execution import device_name
from dps.models.loading import load_model


def floor(net, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    out = net(xg, t)
    return torch.autograd.grad(out, xg, torch.cos(out))[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(net, x: torch.Tensor, t: torch.Tensor, repeats: int) -> list[str]:
    rows = []
    for ckpt in (False, True):
        net.use_checkpoint = ckpt
        times, grads, mem = {True: [], False: []}, {}, {}
        for lean in (True, False):
            net.lean = lean
            floor(net, x, t)
            with PeakMemory(x.device) as peak:
                grads[lean] = floor(net, x, t)
            sync(x.device)
            mem[lean] = peak.peak / 2**20
        for _ in range(repeats):
            for lean in (True, False):
                net.lean = lean
                sync(x.device)
                start = time.perf_counter()
                floor(net, x, t)
                sync(x.device)
                times[lean].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        diff = float((grads[True] - grads[False]).abs().max() / grads[False].abs().max())
        rows.append(f"| {'on' if ckpt else 'off'} | {med[False]:.1f} | {med[True]:.1f} | {med[True] / med[False]:.3f} | "
                    f"{mem[False]:.0f} | {mem[True]:.0f} | {mem[False] / mem[True]:.2f} | {diff:.1e} |")
    net.use_checkpoint, net.lean = False, None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a model name or checkpoint (default: --arch)")
    ap.add_argument("--arch", default="ffhq256")
    ap.add_argument("--size", default="64,128", help="image sizes for --arch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = []
    if args.model:
        prior = load_model(args.model)
        cases.append((args.model, prior.network, tuple(prior.event_shape)))
    else:
        for size in (int(s) for s in args.size.split(",")):
            cases.append((f"{args.arch} at {size} px", random_prior(args.arch, size).network, (3, size, size)))
    print(f"{device_name(torch.device(args.device))}; torch {torch.__version__}; floor = forward + VJP to x, batch 1\n")
    print("| network | ckpt | plain ms | lean ms | lean / plain | plain MiB | lean MiB | memory plain / lean | "
          "max grad difference (relative) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, net, shape in cases:
        device = torch.device(args.device)
        net.requires_grad_(False).eval().to(device)
        x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device)
        t = torch.full((1,), 500, device=device)
        for row in measure(net, x, t, args.repeats):
            print(f"| {name} " + row)


if __name__ == "__main__":
    main()

"""Quality per compute: every method at about 50, 100, 250 and 1000 network evaluations per sample.

    python benchmarks/quality_per_compute/quality_per_compute.py --out out/qpc [--nfe 50,100,250,1000] [--n 8]
        [--methods dps,ddrm,pigdm,diffpir,daps] [--tasks ...] [--device-note "..."] [--with-rows OLD/rows.json]
        [--grid vp|edm|ve] [--model digits-latent]

With ``--grid`` the methods that take a noise-level grid run on it (``dps bench images --grid``), and their
rows are labelled ``METHOD@GRID`` (e.g. ``dps@edm``), so runs on several grids report together (``--with-rows``).
``--model`` runs another digits model (the latent methods take ``digits-latent``); the measurements are the same
(the held-out digits, each task's operator and noise from the seed).

For each budget it runs ``dps bench images --nfe N`` (resumable; one folder per budget, phase retrieval in
its own folder with the paper's best of 4 samples by residual, the other tasks one sample) on the held-out
digits, then writes ``OUT/quality_per_compute.md`` (mean PSNR / digit accuracy per method, task and budget,
with the counted evaluations and seconds per image, and per task the smallest budget at which some method
reaches 1000-evaluation DPS's PSNR), ``OUT/quality_per_compute.png`` (PSNR against evaluations) and
``OUT/rows.json`` (every row of the report).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LINEAR_TASKS = "super_resolution,inpainting_box,inpainting_random,gaussian_blur,motion_blur"


def _settings(methods: list[str], tasks: list[str], n: int, seed: int, nfe: int, samples: int, grid=None,
              model: str = "default"):
    from dps.runs.bench import BenchSettings
    from dps.runs.spec import Overrides

    return BenchSettings(methods=methods, tasks=tasks, n=n,
                         overrides=Overrides(nfe=nfe, seed=seed, samples=samples, model=model, grid=grid))


def _label(row: dict, grid) -> dict:
    from dps.solvers.methods import METHODS

    takes = row["method"] in METHODS and METHODS[row["method"]].takes_grid
    return {**row, "method": f"{row['method']}@{grid}"} if grid and takes else row


def _groups(tasks: list[str]) -> list[tuple[list[str], int, str]]:
    """(tasks, samples K, folder suffix): phase retrieval with the paper's best of 4 by residual in its own
    folder, the other tasks one sample."""
    return [([t for t in tasks if t != "phase_retrieval"], 1, ""), ([t for t in tasks if t == "phase_retrieval"], 4, "_pr")]


def run(out: Path, budgets: list[int], methods: list[str], tasks: list[str], n: int, seed: int, note: str,
        grid=None, model: str = "default") -> list[dict]:
    """Every budget in turn; the report is rewritten after each, so an interrupted run leaves one."""
    from dps.runs.bench import run_bench

    rows = []
    for nfe in budgets:
        for group, samples, suffix in _groups(tasks):
            if not group:
                continue
            folder = out / f"nfe{nfe}{suffix}"
            table = run_bench(_settings(methods, group, n, seed, nfe, samples, grid, model), folder, progress=False)
            rows += [_label({**r, "budget": nfe}, grid) for r in table["rows"] if r.get("psnr") is not None]
            print(f"done nfe={nfe} tasks={','.join(group)}", flush=True)
        write(out, rows, budgets, note)
    return rows


def collect(out: Path, budgets: list[int], methods: list[str], tasks: list[str], n: int, seed: int,
            grid=None, model: str = "default") -> list[dict]:
    """Rows of the (method, task) pairs that an earlier, interrupted run finished (every image written), without
    computing anything: how a long run's finished part is reported before it completes."""
    from dps.execution import Execution
    from dps.models.loading import load_model
    from dps.runs.bench import _load_data, bench_specs
    from dps.runs.layout import BenchLayout
    from dps.runs.tables import aggregate

    shape = tuple(load_model(model).event_shape)
    execution = Execution()  # nothing runs: the tables only read the folders
    rows = []
    for nfe in budgets:
        for group, samples, suffix in _groups(tasks):
            layout = BenchLayout(out / f"nfe{nfe}{suffix}")
            items, labels, _ = _load_data(_settings(methods, group, n, seed, nfe, samples, grid, model), shape)
            for m in methods:
                for t in group:
                    if all(layout.result(m, t, it.name, ".json").exists() for it in items):
                        one = _settings([m], [t], n, seed, nfe, samples, grid, model)
                        table = aggregate(layout, bench_specs(one, execution), items, labels, one)
                        rows += [_label({**r, "budget": nfe}, grid) for r in table["rows"]
                                 if r.get("psnr") is not None]
    return rows


def write(out: Path, rows: list[dict], budgets: list[int], note: str) -> None:
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    (out / "quality_per_compute.md").write_text(report(rows, budgets, note))
    plot(rows, out / "quality_per_compute.png")


def report(rows: list[dict], budgets: list[int], note: str) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    get = {(r["method"], r["task"], r["budget"]): r for r in rows}
    lines = [f"Held-out digits, {rows[0]['n']} images; cells: mean PSNR (dB) / SSIM / digit accuracy (measured "
             f"evaluations per sample, seconds per image). {note}".strip(), ""]
    for task in tasks:
        lines += [f"### {task}", "", "| method | " + " | ".join(f"{b} NFE" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = []
            for b in budgets:
                r = get.get((m, task, b))
                cells.append("n/a" if r is None else f"{r['psnr']:.2f} / {r.get('ssim', float('nan')):.3f} / "
                             f"{r.get('digit_acc', float('nan')):.2f} ({r['nfe']:.0f}, {r['seconds_per_image']:.2f} s)")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        ref = get.get(("dps", task, 1000))
        if ref is not None:
            hits = [r for r in rows if r["task"] == task and r["psnr"] >= ref["psnr"] and r is not ref]
            if hits:
                least = min(r["nfe"] for r in hits)
                who = ", ".join(sorted(r["method"] for r in hits if r["nfe"] == least))
                found = (f"{least:.0f} evaluations ({who}; {least / ref['nfe']:.2f} of DPS's compute, whose "
                         "evaluations also backpropagate)")
            else:
                found = "none of the other methods and budgets"
            lines += ["", f"1000-evaluation DPS: {ref['psnr']:.2f} dB. Smallest budget reaching it: {found}"]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colour = {m: f"C{k}" for k, m in enumerate(methods)}  # one colour per method in every panel
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m in methods:
            pts = sorted((r["nfe"], r["psnr"]) for r in rows if r["task"] == task and r["method"] == m)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colour[m], label=m)
        ax.set_xscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("network evaluations / sample")
    axes[0][0].set_ylabel("PSNR (dB)")
    handles = [plt.Line2D([], [], color=colour[m], marker="o", label=m) for m in methods]
    fig.legend(handles=handles, loc="upper center", ncol=len(methods), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nfe", default="50,100,250,1000")
    ap.add_argument("--methods", default="dps,ddrm,pigdm,diffpir,daps")
    ap.add_argument("--tasks", default=LINEAR_TASKS + ",phase_retrieval")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-note", default="", help="the machine, for the report's header")
    ap.add_argument("--with-rows", type=Path, default=None,
                    help="rows.json of an earlier run (other budgets or methods) to report together with this one")
    ap.add_argument("--grid", choices=["vp", "edm", "ve"], default=None,
                    help="the noise-level grid of the methods that take one (default: each method's own)")
    ap.add_argument("--model", default="default", help="the digits model (digits-latent for the latent methods)")
    ap.add_argument("--collect", action="store_true",
                    help="compute nothing: report the pairs an interrupted run in --out finished")
    args = ap.parse_args()
    budgets = [int(b) for b in args.nfe.split(",")]
    earlier = json.loads(args.with_rows.read_text()) if args.with_rows else []
    if args.collect:
        rows = collect(args.out, budgets, args.methods.split(","), args.tasks.split(","), args.n, args.seed,
                       args.grid, args.model)
        write(args.out, rows, budgets, args.device_note)
    else:
        rows = run(args.out, budgets, args.methods.split(","), args.tasks.split(","), args.n, args.seed,
                   args.device_note, args.grid, args.model)
    if earlier:
        rows = earlier + rows
        write(args.out, rows, sorted({r["budget"] for r in rows}), args.device_note)
    print((args.out / "quality_per_compute.md").read_text())


if __name__ == "__main__":
    from dps.errors import DPSError

    try:
        main()
    except DPSError as exc:  # a bad folder or setting: one line, as the CLI says it
        raise SystemExit(f"error: {exc}") from None

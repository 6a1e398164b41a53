"""``dps demo``: DPS with the embedded digits model on every task of the paper, on held-out images.

For each task the demo measures ``n`` held-out digits (never seen in training), runs DPS with K samples
each, and reports, per task: PSNR and SSIM of the first sample against the ground truth, the embedded
classifier's accuracy on the reconstructions versus on the measurement's naive inverse (A^+ y for
super-resolution and inpainting, y itself for the blurs, |IFFT(y)| with zero phase for phase retrieval),
and the mean measurement residual. It writes ``figure.png`` (one row per task: measurement | DPS samples |
ground truth, Figure 1 of the paper), ``metrics.json`` and ``metrics.md`` (a gallery run:
:mod:`dps.runs.gallery`).

Step sizes are zeta' of the "paper" rule (zeta_i = zeta' / ||y - A(x0_hat)||), chosen for this model and
32 x 32 images (:data:`DEMO_VARIANTS`); x0_hat is clipped to [-1, 1] as in the authors' code. With the embedded
latent model (``--model digits-latent``) the demo runs latent DPS, ``steps`` evaluations, with its own zeta' per task
(:data:`DEMO_LATENT_ZETA`).
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from ..errors import DPSError
from ..execution import Execution
from ..tasks import Task, Variant
from .gallery import Gallery, run_gallery, write_text
from .layout import GalleryLayout
from .loop import Item, digest_tensor
from .spec import Overrides, resolve

__all__ = ["DEMO_VARIANTS", "DEMO_ZETA_STEPS", "DEMO_DEFAULTS", "demo_tasks", "run_demo", "metrics_table"]

#: The demo's tasks: overrides of the task catalogue (``dps/task_presets``) for the embedded 32 x 32 model.
#: Gaussian noise sigma 0.05 in [0, 1] units, Poisson rate 1. SR x4, box and 92% random inpainting and phase
#: retrieval (oversampling 2) keep the catalogue's settings as they scale. The blur kernels do not: the
#: paper's 61-px kernels (std 3 px) scaled to 32 px become a 7-px kernel of std 0.375 px, which leaves these
#: digits (8 x 8 originals, strokes about 5 px wide) practically unchanged, so the demo blurs as strongly
#: relative to the strokes as the paper does relative to faces: Gaussian 13 x 13 with std 2 px, and motion
#: kernels of 15 px. zeta' (rule "paper") per task is the best of a grid by mean PSNR on 8 TRAINING digits at
#: DEMO_ZETA_STEPS steps (benchmarks/demo_step_sizes/); the held-out digits played no part in it.
#: The step count at which the demo's zeta' were chosen; other step counts scale them (Task.with_steps).
DEMO_ZETA_STEPS = 100
_demo = partial(Variant, zeta_steps=DEMO_ZETA_STEPS)
DEMO_VARIANTS: tuple[Variant, ...] = (
    _demo("super_resolution", "super_resolution", "SR x4", noise="gaussian:0.05", zeta=1.58),
    _demo("inpainting_box", "inpainting_box", "box inpainting", noise="gaussian:0.05", zeta=3.16),
    _demo("inpainting_random", "inpainting_random", "random inpainting 92%", noise="gaussian:0.05", zeta=4.74),
    _demo("gaussian_blur", "gaussian_blur", "Gaussian deblur", {"size": 13, "std": 2.0}, "gaussian:0.05", 4.74),
    _demo("motion_blur", "motion_blur", "motion deblur", {"size": 15}, "gaussian:0.05", 4.74),
    _demo("gaussian_blur_poisson", "gaussian_blur", "Gaussian deblur, Poisson", {"size": 13, "std": 2.0},
          "poisson:1.0", 3.16),
    _demo("phase_retrieval", "phase_retrieval", "phase retrieval", noise="gaussian:0.05", zeta=3.16),
    _demo("nonlinear_blur", "nonlinear_blur", "nonlinear deblur", {"size": 15}, "gaussian:0.05", 3.16),
)

#: latent DPS's zeta' (rule "paper", given for 1000 steps, its budget rule) per demo task with the embedded latent
#: model: the best of a grid by mean PSNR on 8 TRAINING digits at DEMO_ZETA_STEPS evaluations
#: (benchmarks/demo_step_sizes/, --model digits-latent).
DEMO_LATENT_ZETA: dict[str, float] = {
    "super_resolution": 0.3, "inpainting_box": 0.1, "inpainting_random": 0.5, "gaussian_blur": 0.15, "motion_blur": 0.1,
    "gaussian_blur_poisson": 0.03, "phase_retrieval": 0.1, "nonlinear_blur": 0.03}

#: the demo's defaults (``dps demo`` without options): images per task, samples per image, DPS steps
DEMO_DEFAULTS = {"n": 8, "samples": 1, "steps": DEMO_ZETA_STEPS}


def demo_tasks(steps: int = DEMO_ZETA_STEPS, names: Optional[list[str]] = None) -> list[tuple[Variant, Task]]:
    """The demo's (variant, task) pairs, all or those in ``names`` (x0_hat clipped to [-1, 1] as the
    authors do, from the catalogue)."""
    known = [v.name for v in DEMO_VARIANTS]
    if names is not None and set(names) - set(known):
        raise DPSError(f"unknown demo task(s) {sorted(set(names) - set(known))}; known: {', '.join(known)}")
    return [(v, v.resolve(steps)) for v in DEMO_VARIANTS if names is None or v.name in names]


def _metrics(res: dict, classifier, labels: torch.Tensor) -> dict:
    from ..metrics import psnr, ssim

    x, recon0 = res["x"], res["samples"][:, 0]
    with torch.no_grad():
        acc_recon = float((classifier(recon0).argmax(1) == labels).float().mean())
        acc_naive = float((classifier(res["naive"]).argmax(1) == labels).float().mean())
    return {"psnr": float(psnr(recon0, x).mean()), "ssim": float(ssim(recon0, x).mean()),
            "psnr_naive": float(psnr(res["naive"], x).mean()), "classifier_acc": acc_recon,
            "classifier_acc_naive": acc_naive, "residual": float(res["residual"].mean())}


def run_demo(out: Path, model: str = "default", n: int = DEMO_DEFAULTS["n"], samples: int = DEMO_DEFAULTS["samples"],
             steps: int = DEMO_DEFAULTS["steps"], seed: int = 0, tasks: Optional[list[str]] = None, execution: Optional[Execution] = None,
             progress: bool = True) -> Optional[dict]:
    """Run the demo into ``out`` (resumable per image; the settings are recorded first in ``demo.json``, and a
    rerun with other settings is refused); returns the metrics summary (None on torchrun ranks > 0)."""
    from ..data.digits import digits_split
    from ..metrics.digits_classifier import load_classifier
    from ..models.loading import load_model
    from .figures import gallery_figure

    execution = execution or Execution.on()
    chosen = demo_tasks(steps, tasks)
    prior = load_model(model, device=execution.torch_device)
    shape = tuple(prior.event_shape)
    if shape != (1, 32, 32):
        raise DPSError(f"the demo runs on 32 x 32 grey digits; the model {model} makes {' x '.join(map(str, shape))} "
                       "images: use dps solve for it")
    images, labels = digits_split("held_out", shape[-1])
    items = [Item(f"heldout{i:03d}", i, x=images[i], digest=digest_tensor(images[i])) for i in range(min(n, len(images)))]
    latent = getattr(prior, "form", None) == "latent"  # a latent model runs latent DPS, `steps` evaluations

    def method(v: Variant) -> Overrides:
        run = Overrides(model=str(model), seed=seed, samples=samples)
        return replace(run, method="latent_dps", nfe=steps, step_size=DEMO_LATENT_ZETA[v.name]) if latent else run

    specs = [resolve(task, method(v), previous={}, execution=execution) for v, task in chosen]
    settings = {"model": str(model), "n": n, "samples": samples, "steps": steps, "seed": seed,
                **execution.network_settings()}
    layout = GalleryLayout(Path(out), "demo.json")
    results = run_gallery(Gallery(layout, [v for v, _ in chosen], specs, settings, lambda j: items, "dps demo"),
                          prior, progress)
    if results is None:
        return None
    classifier = load_classifier()
    summary = {task.name: {**_metrics(results[task.name], classifier, labels[:len(items)]), "noise": task.noise,
                           "zeta": spec.method_settings().zeta, "seconds": round(float(results[task.name]["seconds"]), 1)}
               for (_, task), spec in zip(chosen, specs)}
    gallery_figure(layout)
    title = specs[0].method_entry.title
    report = {**settings, "method": specs[0].method, "device": execution.device,
              "images": "held-out digits (never used in training)", "tasks": summary,
              "figure": f"rows: tasks (row r shows held-out image r mod n); columns: measurement | {title} samples | "
                        "ground truth"}
    from .folder import write_json

    write_json(layout.metrics(".json"), report)
    write_text(layout.metrics(".md"), metrics_table(report))
    return report


def metrics_table(report: dict) -> str:
    from ..solvers.methods import get_method

    title = get_method(report.get("method", "dps")).title
    head = (f"{title} on {report['n']} held-out digits per task, {report['steps']} steps, "
            f"model `{report['model']}`, seed {report['seed']}\n\n"
            f"| task | noise | zeta' | PSNR (dB) | SSIM | classifier acc. {title} | classifier acc. naive inverse | "
            "PSNR naive (dB) |\n|---|---|---|---|---|---|---|---|\n")
    rows = [f"| {k} | {v['noise']} | {v['zeta']} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['classifier_acc']:.2f} | "
            f"{v['classifier_acc_naive']:.2f} | {v['psnr_naive']:.2f} |" for k, v in report["tasks"].items()]
    return head + "\n".join(rows) + "\n"

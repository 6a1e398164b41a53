"""``dps example``: DPS on every measurement model of the paper with an exact prior, no trained network.

The prior is the pattern mixture (:func:`~dps.priors.patterns.pattern_prior`). For every task a ground truth
is drawn from the prior (unconditional sample i of the seed, :mod:`dps.seeds`), measured, and
reconstructed by DPS; the run is a gallery (:mod:`dps.runs.gallery`): ``figure.png`` (measurement | DPS
samples | ground truth per task), ``metrics.json`` and ``metrics.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..execution import Execution
from ..metrics import psnr
from ..priors.patterns import pattern_prior
from ..seeds import unconditional_generators
from ..tasks import Variant
from .folder import write_json
from .gallery import Gallery, run_gallery, write_text
from .layout import GalleryLayout
from .loop import Item, digest_tensor
from .spec import Overrides, resolve

__all__ = ["EXAMPLE_VARIANTS", "run_example"]

#: The example's tasks: the catalogue's tasks at 32 px (operators scaled as the presets scale them), with
#: Gaussian noise sigma 0.05 and zeta' 1 (0.4 for phase retrieval), plus motion deblurring with Poisson noise.
EXAMPLE_VARIANTS: tuple[Variant, ...] = (
    Variant("super_resolution", "super_resolution", "SR x4", noise="gaussian:0.05", zeta=1.0),
    Variant("inpainting_box", "inpainting_box", "box inpainting", noise="gaussian:0.05", zeta=1.0),
    Variant("inpainting_random", "inpainting_random", "random inpainting", noise="gaussian:0.05", zeta=1.0),
    Variant("gaussian_blur", "gaussian_blur", "Gaussian deblur", noise="gaussian:0.05", zeta=1.0),
    Variant("motion_blur", "motion_blur", "motion deblur", noise="gaussian:0.05", zeta=1.0),
    Variant("motion_blur_poisson", "motion_blur", "motion deblur, Poisson", noise="poisson:1.0", zeta=1.0),
    Variant("phase_retrieval", "phase_retrieval", "phase retrieval", noise="gaussian:0.05", zeta=0.4),
    Variant("nonlinear_blur", "nonlinear_blur", "nonlinear deblur", noise="gaussian:0.05", zeta=1.0),
)


def run_example(out: Path, steps: int = 200, samples: int = 3, seed: int = 0,
                execution: Optional[Execution] = None, progress: bool = True) -> Optional[dict]:
    """Run every task into ``out``; returns the summary (also ``metrics.json``; None on torchrun ranks > 0)."""
    from .figures import gallery_figure

    execution = execution or Execution.on()
    prior = pattern_prior()  # the ground truths are drawn on the CPU; the run moves the prior to its device
    truths = [prior.clip_data(prior.to_data(prior.sample(1, g)))[0]
              for g in unconditional_generators(seed, len(EXAMPLE_VARIANTS))]
    items = [[Item(v.name, i, x=truths[i], digest=digest_tensor(truths[i]))] for i, v in enumerate(EXAMPLE_VARIANTS)]
    specs = [resolve(v.resolve(steps, clip_x0=None), Overrides(seed=seed, samples=samples), previous={},
                     execution=execution) for v in EXAMPLE_VARIANTS]  # the mixture is not a [-1, 1] model
    settings = {"steps": steps, "samples": samples, "seed": seed}
    layout = GalleryLayout(Path(out), "example.json")
    results = run_gallery(Gallery(layout, EXAMPLE_VARIANTS, specs, settings, lambda j: items[j], "dps example"),
                          prior, progress)
    if results is None:
        return None
    summary = {}
    for spec in specs:
        res = results[spec.task.name]
        x, xs = res["x"], res["samples"][0]
        summary[spec.task.name] = {
            "psnr_samples": [round(float(psnr(r[None], x)[0]), 2) for r in xs],
            "psnr_mean": round(float(psnr(xs.mean(0)[None], x)[0]), 2),
            "residual": [round(float(v), 4) for v in res["residual"][0]],
            "noise": spec.task.noise, "zeta": spec.task.dps_config().zeta}
    gallery_figure(layout)
    report = {**settings, "device": execution.device, "tasks": summary,
              "figure": "rows: tasks; columns: measurement | DPS samples | ground truth"}
    write_json(layout.metrics(".json"), report)
    rows = [f"| {k} | {v['noise']} | {v['psnr_mean']:.2f} | {', '.join(f'{p:.1f}' for p in v['psnr_samples'])} |"
            for k, v in summary.items()]
    write_text(layout.metrics(".md"), "\n".join(["| task | noise | PSNR of sample mean (dB) | PSNR per sample (dB) |",
                                                 "|---|---|---|---|", *rows]) + "\n")
    return report

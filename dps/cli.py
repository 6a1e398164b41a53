"""The ``dps`` command line. Names become objects here and nowhere else.

Errors: every error a user can cause ends in one line ``Error: ...`` and exit status 1 (status 2 for
usage errors, as click reports them). ``dps --debug ...`` or ``DPS_DEBUG=1`` shows the traceback instead.
An unexpected exception (a bug) prints one line that says so and how to report it, with status 3.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import DPSError
from .solvers.dps import STEP_RULES, DPSConfig
from .solvers.methods import METHODS
from .tasks import DEFAULT_PRESET, STEP_SIZES

_DEBUG = {"on": False}


def _one_line(exc: BaseException) -> str:
    from .io import describe_exception

    return describe_exception(exc)


class _Group(click.Group):
    """The top-level group: turns exceptions into one-line errors (see the module docstring)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if _DEBUG["on"] or os.environ.get("DPS_DEBUG"):
                raise
            raise _friendly(exc) from None


def _friendly(exc: Exception) -> click.ClickException:
    """One line for any exception: ours as they are; missing packages, permissions and disk errors named."""
    if isinstance(exc, DPSError):
        return click.ClickException(str(exc))
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or str(exc)
        extra = {"diffusers": "pip install 'dps[diffusers]'", "torchmetrics": "pip install 'dps[metrics]'",
                 "lpips": "pip install 'dps[metrics]'"}.get((name or "").split(".")[0], f"pip install {name}")
        return click.ClickException(f"the optional package {name!r} is needed for this and is not installed: {extra}")
    if isinstance(exc, PermissionError):
        return click.ClickException(f"permission denied: {exc.filename or exc}; choose a folder you can write to")
    if isinstance(exc, OSError) and exc.errno is not None:
        return click.ClickException(f"{exc.strerror}: {exc.filename or ''}".rstrip(": "))
    if isinstance(exc, (ValueError, FileNotFoundError)):  # our older checks: their message is meant for users
        text = str(exc).strip().splitlines()
        return click.ClickException(text[0] if text else _one_line(exc))
    err = click.ClickException(f"internal error ({_one_line(exc)}); rerun with `dps --debug ...` and report the "
                               "traceback")
    err.exit_code = 3
    return err


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not items or any(v <= 0 for v in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return items


def _execution_options(fn):
    """--precision, --checkpointing, --compile: how the network runs (DPSConfig's execution settings)."""
    fn = click.option("--compile", "compile_network", is_flag=True,
                      help="torch.compile the network (needs a C++ compiler on the CPU; compiles on first use)")(fn)
    fn = click.option("--checkpointing", is_flag=True,
                      help="recompute the network's blocks in the backward pass: less memory, more time")(fn)
    return click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
                        help="dtype of the network's forward and VJP (autocast); the iterate stays float32")(fn)


def _execution(precision: str, checkpointing: bool, compile_network: bool) -> dict:
    """The non-default execution settings as DPSConfig fields."""
    chosen = {"precision": precision, "checkpointing": checkpointing, "compile": compile_network}
    return {k: v for k, v in chosen.items() if v != DPSConfig.EXECUTION_DEFAULTS[k]}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors (or set DPS_DEBUG=1)")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="intra-op CPU threads of this process (default: torch's, or the cores divided by the "
                   "processes under torchrun); give each of several concurrent jobs its share")
def main(debug: bool, threads: int | None) -> None:
    """Diffusion Posterior Sampling (Chung et al., ICLR 2023) for noisy inverse problems."""
    _DEBUG["on"] = debug
    if threads is not None:
        from .distributed import set_threads

        set_threads(threads)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/example"),
              help="folder for figure.png, metrics.json and metrics.md")
@click.option("--steps", type=click.IntRange(1, 1000), default=200, help="DPS steps per task")
@click.option("--samples", type=click.IntRange(1, 16), default=3, help="posterior samples per task")
@click.option("--seed", type=int, default=0)
def example(out: Path, steps: int, samples: int, seed: int) -> None:
    """End-to-end DPS on every measurement model of the paper, with an exact (pattern-mixture) prior."""
    from .example import run_example

    summary = run_example(out, steps=steps, samples=samples, seed=seed)
    click.echo((out / "metrics.md").read_text())
    click.echo(f"wrote {out / 'figure.png'}, {out / 'metrics.json'} ({summary['steps']} steps per task)")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="run folder (state, model.safetensors, loss.csv, loss.png); rerun to resume")
@click.option("--data", default="digits", help="'digits' (embedded data set, training split) or an image folder")
@click.option("--steps", type=click.IntRange(1), default=6000, help="total optimiser steps")
@click.option("--batch-size", type=click.IntRange(1), default=64)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-4)
@click.option("--ema-decay", type=click.FloatRange(0, 1), default=0.999)
@click.option("--grad-clip", type=click.FloatRange(0, min_open=True), default=1.0)
@click.option("--seed", type=int, default=0)
@click.option("--checkpoint-every", type=click.IntRange(1), default=250)
@click.option("--unet", "unet_json", default=None,
              help="UNet create_model keywords as JSON or a JSON/YAML file (default: the digits architecture)")
@click.option("--image-size", type=click.IntRange(8), default=None, help="override unet.image_size")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="override unet.in_channels")
@click.option("--hflip", is_flag=True, help="random horizontal flips (not for digits)")
def train(out, data, steps, batch_size, lr, ema_decay, grad_clip, seed, checkpoint_every, unet_json, image_size,
          channels, hflip) -> None:
    """DDPM training (epsilon prediction) of the guided-diffusion UNet; resumable, seeded."""
    from .models.loading import resolve_config
    from .train import DIGITS_UNET, TrainConfig, train as run_train

    unet = dict(DIGITS_UNET)
    if unet_json:
        unet = json.loads(unet_json) if unet_json.lstrip().startswith("{") else resolve_config(unet_json)
    if image_size:
        unet["image_size"] = image_size
    if channels:
        unet["in_channels"] = int(channels)
    cfg = TrainConfig(data=data, unet=unet, steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
                      grad_clip=grad_clip, seed=seed, checkpoint_every=checkpoint_every, hflip=hflip)
    run_train(cfg, out)
    click.echo(f"wrote {out / 'model.safetensors'} (EMA weights), {out / 'loss.csv'}, {out / 'loss.png'}")


@main.command()
@click.option("--model", default="default", help="embedded name, diffusers folder, .safetensors or guided-diffusion .pt")
@click.option("--config", default=None, help="guided-diffusion config: preset name or JSON/YAML file")
@click.option("--n", type=click.IntRange(1), default=64, help="number of samples")
@click.option("--steps", type=click.IntRange(1, 1000), default=250, help="reverse steps (respaced)")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim"]), default="ddpm")
@click.option("--eta", type=click.FloatRange(0, 1), default=0.0, help="DDIM eta")
@click.option("--seed", type=int, default=0)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/samples.png"),
              help="grid image (PNG); the samples also go to OUT with suffix .pt")
def sample(model, config, n, steps, sampler, eta, seed, out) -> None:
    """Unconditional samples from a prior, as a grid image."""
    import math

    import torch

    from .images import make_grid, save_image
    from .seeds import unconditional_generators
    from .solvers.unconditional import sample_prior
    from .utils import atomic_path

    prior = _load_prior(model, config)
    gens = unconditional_generators(seed, n)
    x = sample_prior(prior, n, steps=steps, sampler=sampler, eta=eta, generator=gens)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(x, nrow=int(math.ceil(math.sqrt(n)))), out)
    with atomic_path(out.with_suffix(".pt")) as tmp:
        torch.save(x, tmp)
    click.echo(f"wrote {out} ({n} samples, {steps} {sampler} steps, seed {seed})")


def _load_prior(model: str, config):
    from .models.loading import load_model

    return load_model(model, config)


@main.command("train-classifier")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="safetensors file (default: the embedded dps/assets/digits_classifier.safetensors)")
@click.option("--epochs", type=click.IntRange(1), default=20)
@click.option("--seed", type=int, default=0)
def train_classifier_cmd(out, epochs, seed) -> None:
    """Train the digit classifier that scores the embedded prior (training split only)."""
    from .metrics.digits_classifier import CLASSIFIER_FILE, save_classifier, train_classifier

    model, stats = train_classifier(epochs=epochs, seed=seed)
    save_classifier(model, stats, out or CLASSIFIER_FILE)
    click.echo(f"wrote {out or CLASSIFIER_FILE}: train accuracy {stats['train_acc']:.4f}, "
               f"held-out accuracy {stats['held_out_acc']:.4f}")


@main.command()
@click.option("--task", "task_name", required=True,
              help="preset (super_resolution, inpainting_box, inpainting_random, gaussian_blur, motion_blur, "
                   "phase_retrieval, nonlinear_blur) or a task YAML/JSON file (a run.json works)")
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="image files or folders (repeatable)")
@click.option("--measurement", "measurements", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="measurement tensors (.pt) instead of images (repeatable)")
@click.option("--operator", "operator_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="operator.pt of an earlier run (its mask/kernel/latent) instead of building one")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--method", type=click.Choice(list(METHODS)), default=None,
              help="reconstruction method (`dps methods` lists them with their settings; dps, mcg and score_sde "
                   "follow --steps, the others their own settings)  [default: dps, or a run.json's]")
@click.option("--method-preset", default=None,
              help="named settings of the method from its paper (`dps methods` lists them, e.g. daps-1k = 200 "
                   "levels x 5 ODE steps); instead of --nfe  [default: none, or a run.json's]")
@click.option("--model", default=None,
              help="prior: embedded name, diffusers folder, .safetensors or .pt  [default: default, or a run.json's]")
@click.option("--config", "model_config", default=None, help="guided-diffusion config (preset name or file)")
@click.option("--steps", type=click.IntRange(1, 1000), default=None,
              help="override the task's DPS steps (zeta' then scales by sqrt(task steps / N))")
@click.option("--nfe", type=click.IntRange(1, 100_000), default=None,
              help="run the method at this many network evaluations per sample (its budget rule, `dps methods`)")
@click.option("--samples", type=click.IntRange(1, 64), default=None,
              help="posterior samples K per image  [default: 1, or a run.json's]")
@click.option("--seed", type=int, default=None, help="[default: 0, or a run.json's]")
@click.option("--noise", default=None, help="override the task's noise: gaussian:SIGMA or poisson:RATE")
@click.option("--preset", type=click.Choice(list(STEP_SIZES)), default=None,
              help="step sizes (and for 'authors' their operators) of a preset  [default: the task's zeta', else "
                   f"{DEFAULT_PRESET}]")
@click.option("--step-size", "zeta", type=click.FloatRange(0), default=None, help="override zeta'")
@click.option("--step-rule", type=click.Choice(list(STEP_RULES)), default=None, help="override the step rule")
@click.option("--select", type=click.Choice(["first", "best-residual"]), default=None,
              help="which sample goes to recon/ when K > 1 (the task's choice by default)")
@click.option("--batch-size", type=click.IntRange(1), default=4, help="images per DPS batch")
@click.option("--resize", type=click.Choice(["error", "resize", "center-crop"]), default="error",
              help="what to do with images whose size differs from the model's")
@click.option("--convert-channels", is_flag=True, help="convert grey <-> RGB images to the model's channels")
@click.option("--progress-frames", type=click.IntRange(0), default=0,
              help="record x0_hat at this many evenly spaced steps (progress/; shown by dps figure)")
@click.option("--kernel-wizard", type=click.Path(exists=True, dir_okay=False), default=None,
              help="GOPRO_wVAE.pth: nonlinear_blur then uses the KernelWizard blur of the paper")
@_execution_options
def solve(task_name, inputs, measurements, operator_file, out, method, method_preset, model, model_config, steps, nfe,
          samples, seed, noise, preset, zeta, step_rule, select, batch_size, resize, convert_channels, progress_frames, kernel_wizard,
          precision, checkpointing, compile_network) -> None:
    """Run DPS on images (or measurements); write a reproducible run folder."""

    from .models.loading import load_model
    from .solve import SolveSettings, run_solve
    from .tasks import Task, load_task, with_step_size

    if nfe is not None and steps is not None:
        raise click.UsageError("--nfe sets the method's steps; leave out --steps")
    task = load_task(task_name, raw=True)
    previous = _run_settings(task_name)  # a run.json also fixes model, samples, seed, method and budget
    model = model or previous.get("model", "default")
    samples = samples or previous.get("samples", 1)
    seed = previous.get("seed", 0) if seed is None else seed
    same_method = method is None or method == previous.get("method", "dps")
    method = method or previous.get("method", "dps")
    if method_preset is None and nfe is None and steps is None and same_method:
        method_preset = previous.get("method_preset")
    if nfe is None and steps is None and method_preset is None:
        nfe = previous.get("nfe")
    dps = dict(task.dps)
    if step_rule is not None:
        dps["step_rule"] = step_rule
    dps.update(_execution(precision, checkpointing, compile_network))
    operator = dict(task.operator)
    if kernel_wizard is not None:
        if task.name != "nonlinear_blur":
            raise click.BadParameter("--kernel-wizard applies to the nonlinear_blur task only")
        operator = {"name": "nonuniform_blur", "weights": str(Path(kernel_wizard).resolve())}
    task = with_step_size(Task(task.name, operator, noise or task.noise, dps,
                               task.select if select is None else (None if select == "first" else select)), preset)
    if zeta is not None:
        task = Task(task.name, task.operator, task.noise, {**task.dps, "zeta": zeta}, task.select)
    if steps is not None:
        task = task.with_steps(steps)
    prior = load_model(model, model_config)
    settings = SolveSettings(model=model, samples=samples, seed=seed, batch_size=batch_size, resize=resize,
                             convert_channels=convert_channels, progress_frames=progress_frames, method=method,
                             nfe=nfe, method_preset=method_preset)
    record = run_solve(task, out, images=list(inputs) or None, measurements=list(measurements) or None,
                       settings=settings, operator_file=operator_file, prior=prior)
    done = record["images"]
    scores = [v["psnr"] for v in done.values() if "psnr" in v]
    msg = f"{len(done)} image(s) in {out}"
    if scores:
        msg += f"; mean PSNR {sum(scores) / len(scores):.2f} dB"
    click.echo(msg)


@main.command("methods")
def methods_cmd() -> None:
    """The reconstruction methods (the one method table) as Markdown."""
    from .solvers.methods import methods_markdown

    click.echo(methods_markdown(), nl=False)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="output PNG (default: RUN_DIR/figure.png, or figure_<task>.png for a bench folder)")
@click.option("--max-images", type=click.IntRange(1), default=8)
def figure(run_dir, out, max_images) -> None:
    """Paper-style grid of a `dps solve` or `dps bench images` folder (plus x0_hat progress strips)."""
    from .evaluation.figures import figure_for

    paths = figure_for(run_dir, out, max_images)
    click.echo("wrote " + ", ".join(map(str, paths)))


def _run_settings(task_name: str) -> dict:
    path = Path(task_name)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        if isinstance(data.get("settings"), dict):
            return data["settings"]
    return {}


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              help="folder for figure.png, metrics.json, metrics.md and per-task tensors (a rerun resumes)")
@click.option("--model", default="default", help="prior (default: the embedded digits model)")
@click.option("--n", type=click.IntRange(1, 359), default=8, help="held-out images per task")
@click.option("--samples", type=click.IntRange(1, 16), default=2, help="DPS samples per image")
@click.option("--steps", type=click.IntRange(1, 1000), default=250, help="DPS steps (respaced)")
@click.option("--seed", type=int, default=0)
@click.option("--tasks", default=None, help="comma-separated subset of the tasks")
def demo(out, model, n, samples, steps, seed, tasks) -> None:
    """DPS with the embedded model on every task of the paper, on held-out digits."""
    from .demo import run_demo

    run_demo(out, model=model, n=n, samples=samples, steps=steps, seed=seed,
             tasks=tasks.split(",") if tasks else None)
    click.echo((out / "metrics.md").read_text())
    click.echo(f"wrote {out / 'figure.png'}, {out / 'metrics.json'}, {out / 'metrics.md'}")


@main.group()
def bench() -> None:
    """Benchmarks."""


@bench.command("prior")
@click.option("--model", default="default", help="a 32 x 32 grey digits prior (default: the embedded model)")
@click.option("--n", type=click.IntRange(16), default=359, help="unconditional samples")
@click.option("--steps", type=click.IntRange(1, 1000), default=250)
@click.option("--seed", type=int, default=0)
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the first 64 samples as a grid PNG")
@click.option("--json", "as_json", is_flag=True)
def bench_prior(model, n, steps, seed, grid, as_json) -> None:
    """Quality of a digits prior without downloads: the embedded classifier's confidence, class evenness
    and Frechet distance (samples vs held-out, next to train vs held-out)."""
    import torch

    from .data.digits import digits_split
    from .images import make_grid, save_image
    from .metrics.digits_classifier import load_classifier, prior_quality
    from .seeds import unconditional_generators
    from .solvers.unconditional import sample_prior

    prior = _load_prior(model, None)
    if tuple(prior.event_shape) != (1, 32, 32):
        raise click.ClickException(f"the digit classifier needs a (1, 32, 32) prior, got {prior.event_shape}")
    gens = unconditional_generators(seed, n)
    x = torch.cat([sample_prior(prior, len(chunk), steps=steps, generator=chunk)
                   for chunk in (gens[i:i + 64] for i in range(0, n, 64))])
    held, _ = digits_split("held_out")
    train, _ = digits_split("train")
    q = {"model": model, "steps": steps, "seed": seed, **prior_quality(load_classifier(), x, held, train)}
    if grid is not None:
        save_image(make_grid(x[:64], nrow=8), grid)
    if as_json:
        click.echo(json.dumps(q, indent=2))
        return
    click.echo(f"{n} samples, {steps} DDPM steps: confidence {q['confidence']:.3f}, "
               f"class evenness {q['class_evenness']:.3f}, class counts {q['class_counts']}")
    click.echo(f"Frechet distance (classifier features): samples vs held-out {q['frechet_samples_vs_held_out']:.2f}; "
               f"train vs held-out {q['frechet_train_vs_held_out']:.2f}")


@bench.command("images")
@click.option("--methods", default="dps", help="comma-separated methods")
@click.option("--tasks", default="super_resolution,inpainting_box,inpainting_random,gaussian_blur,motion_blur",
              help="comma-separated task presets or task files")
@click.option("--n", "--num-images", "n", type=click.IntRange(1), default=8,
              help="number of images (spell it --num-images under torchrun, whose parser claims --n)")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="override every task's DPS steps")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--data", default=None, help="image folder (default: the embedded model's held-out digits)")
@click.option("--model", default="default")
@click.option("--config", "model_config", default=None, help="guided-diffusion config (preset name or file)")
@click.option("--seed", type=int, default=0)
@click.option("--batch-size", type=click.IntRange(1), default=8)
@click.option("--preset", type=click.Choice(list(STEP_SIZES)), default=None,
              help=f"step-size preset for every task  [default: the tasks' zeta', else {DEFAULT_PRESET}]")
@click.option("--samples", type=click.IntRange(1, 64), default=1,
              help="samples K per image; tasks with select: best-residual keep the lowest-residual one (the "
                   "paper's best of 4 for phase retrieval), the others sample 0")
@click.option("--nfe", type=click.IntRange(1, 100_000), default=None,
              help="run every method at this many network evaluations per sample (its budget rule in the method "
                   "table); methods without a network keep their settings")
@click.option("--method-preset", "method_presets", multiple=True, metavar="METHOD=PRESET",
              help="run METHOD with one of its presets (`dps methods`), e.g. daps=daps-1k; repeatable; not with --nfe")
@_execution_options
def bench_images(methods, tasks, n, steps, out, data, model, model_config, seed, batch_size, preset, samples,
                 nfe, method_presets, precision, checkpointing, compile_network) -> None:
    """Methods x tasks over N images; per-image results and the paper's table layout (resumable)."""
    from .evaluation.runner import BenchSettings, run_bench

    if nfe is not None and steps is not None:
        raise click.UsageError("--nfe sets each method's steps; leave out --steps")
    settings = BenchSettings(methods=methods.split(","), tasks=tasks.split(","), n=n, steps=steps, seed=seed, preset=preset,
                             samples=samples, batch_size=batch_size, model=model, data=data, nfe=nfe,
                             method_presets=_pairs(method_presets, "--method-preset"),
                             execution=_execution(precision, checkpointing, compile_network))
    prior = _load_prior(model, model_config)
    table = run_bench(settings, out, prior=prior)
    if not table:  # a torchrun worker other than rank 0: rank 0 writes the tables
        return
    if table["fid_lpips"] != "ok":
        click.echo(f"FID and LPIPS: {table['fid_lpips']}; those columns read n/a", err=True)
    click.echo((out / "table.md").read_text())


def _pairs(items, option: str) -> dict[str, str]:
    """NAME=VALUE items as a dict (one value per name), or a one-line usage error."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip() or name.strip() in out:
            raise click.BadParameter(f"expected METHOD=PRESET, each method once; got {item!r}", param_hint=option)
        out[name.strip()] = value.strip()
    return out


def _bool_list(ctx: click.Context, param: click.Parameter, value: str) -> list[bool]:
    words = {"off": False, "on": True}
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items or any(v not in words for v in items):
        raise click.BadParameter(f"expected comma-separated on/off, got {value!r}")
    return [words[v] for v in items]


def _precision_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from .diffusion.denoiser import PRECISIONS

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items or any(v not in PRECISIONS for v in items):
        raise click.BadParameter(f"expected comma-separated precisions from {', '.join(PRECISIONS)}, got {value!r}")
    return items


@bench.command("speed")
@click.option("--model", default="default",
              help="prior: embedded name, diffusers folder, .safetensors or .pt (ignored with --arch)")
@click.option("--config", "model_config", default=None, help="guided-diffusion config of a .pt (preset name or file)")
@click.option("--arch", type=click.Choice(["ffhq256", "imagenet256"]), default=None,
              help="measure this guided-diffusion architecture with random weights instead of --model")
@click.option("--image-size", type=click.IntRange(8), default=None, help="image size of --arch (default: 256)")
@click.option("--batch", type=click.IntRange(1), default=1, help="measurements B per call")
@click.option("--samples", default="1", callback=_int_list, help="samples K per measurement, comma-separated")
@click.option("--precision", default="fp32", callback=_precision_list, help="comma-separated: fp32, bf16, fp16")
@click.option("--checkpointing", default="off", callback=_bool_list, help="comma-separated on/off")
@click.option("--compile", "compile_network", default="off", callback=_bool_list, help="comma-separated on/off")
@click.option("--steps", type=click.IntRange(1), default=3, help="DPS / unconditional steps per timed run")
@click.option("--repeats", type=click.IntRange(1), default=5, help="timed repeats (medians are reported)")
@click.option("--measure", default="forward,floor,dps_step,uncond_step",
              help="comma-separated quantities to measure (fewer: faster, e.g. floor,dps_step for memory tables)")
@click.option("--device", default=None, help="cpu, cuda or cuda:N  [default: cuda:0 when present, else cpu]")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the report as JSON to this file")
def bench_speed(model, model_config, arch, image_size, batch, samples, precision, checkpointing, compile_network,
                steps, repeats, measure, device, json_out) -> None:
    """Network forward, the floor (forward + VJP), the DPS step and the unconditional step; peak memory."""
    import torch

    from .bench.speed import SpeedSettings, random_prior, run_speed, speed_markdown
    from .utils import atomic_write

    from .bench.speed import QUANTITIES

    if image_size is not None and arch is None:
        raise click.UsageError("--image-size applies to --arch only (a model has its own size)")
    measure = tuple(m.strip() for m in measure.split(",") if m.strip())
    if not measure or set(measure) - set(QUANTITIES):
        raise click.BadParameter(f"choose from {', '.join(QUANTITIES)}", param_hint="--measure")
    try:
        dev = torch.device(device) if device else torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise click.BadParameter(f"{device!r} is not a device; use cpu, cuda or cuda:N", param_hint="--device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device}: this machine has no CUDA device", param_hint="--device")
    prior = random_prior(arch, image_size) if arch else _load_prior(model, model_config)
    name = f"{arch} (random weights)" if arch else model
    settings = SpeedSettings(batch=batch, samples=tuple(samples), precision=tuple(precision),
                             checkpointing=tuple(checkpointing), compile=tuple(compile_network), repeats=repeats,
                             steps=steps, measure=measure)
    def progress(report: dict) -> None:  # every row as it is measured; the JSON so far survives an interruption
        rows = report["rows"]
        mem = sum(r["floor_mem_bytes"] is not None or r["dps_mem_bytes"] is not None for r in rows)
        click.echo(f"timed {len(rows)} of {len(settings.grid())} row(s), memory of {mem}", err=True)
        if json_out is not None:
            atomic_write(json_out, lambda p: p.write_text(json.dumps(report, indent=1)))

    report = run_speed(prior, settings, dev, name, progress=progress)
    click.echo(speed_markdown(report), nl=False)


@bench.command("gmm")
@click.option("--dim", "dims", default="8", callback=_int_list, help="dimension(s) d (even), comma-separated")
@click.option("--obs-dim", "obs_dims", default="1,2,4", callback=_int_list, help="observation dimension(s) d_y")
@click.option("--steps", "--nfe", "steps_list", default="100", callback=_int_list,
              help="network evaluations per sample, comma-separated: DPS's steps, every other method's budget")
@click.option("--problems", type=click.IntRange(1), default=5, help="problems (seeds) per cell")
@click.option("--first-seed", type=click.IntRange(0), default=0, help="seed of the first problem")
@click.option("--samples", type=click.IntRange(2), default=2000, help="samples per problem")
@click.option("--step-size", "zeta", type=click.FloatRange(0), default=None,
              help="zeta' (default: the documented GMM default of the step rule)")
@click.option("--step-rule", type=click.Choice(list(STEP_RULES)), default="variance", show_default=True,
              help="DPS step-size rule (dps.solvers.dps); 'paper' is Appendix C.2's zeta'/||r||")
@click.option("--methods", default="dps", help="also run comparison methods (those of the method table that "
              "apply to a matrix operator with Gaussian noise, e.g. dps,ddrm,mcg)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def bench_gmm(dims, obs_dims, steps_list, problems, first_seed, samples, zeta, step_rule, methods, as_json) -> None:
    """Sliced Wasserstein distance of DPS to the exact Gaussian-mixture posterior (shared/GMM_BENCHMARK.md).

    Per cell: DPS, prior samples ("knows nothing about y") and a second exact sample set (the floor).
    """
    from .bench.gmm import GMM_DEFAULT_ZETA, GMM_REFERENCE_STEPS, gmm_methods, run_cell

    extra = tuple(m for m in methods.split(",") if m and m != "dps")
    available = gmm_methods()
    if set(extra) - set(available):
        raise click.BadParameter(f"method(s) {sorted(set(extra) - set(available))} do not apply to this benchmark "
                                 f"or do not exist; available: {', '.join(available)}", param_hint="--methods")

    if any(d % 2 for d in dims):
        raise click.BadParameter("the benchmark's dimension must be even", param_hint="--dim")
    zeta = GMM_DEFAULT_ZETA[step_rule] if zeta is None else zeta
    seeds = list(range(first_seed, first_seed + problems))
    cols = ("dps", *extra, "prior", "floor")
    header = "| d | d_y | steps | " + " | ".join(METHODS[c].title if c in METHODS else c for c in cols) + " |"
    if not as_json:
        click.echo(f"  cells as they finish: {header}", err=True)
    cells = []
    for d in dims:
        for d_y in obs_dims:
            if d_y > d:
                raise click.BadParameter(f"--obs-dim {d_y} exceeds --dim {d}")
            for n in steps_list:
                cfg = DPSConfig(steps=n, zeta=zeta, step_rule=step_rule, reference_steps=GMM_REFERENCE_STEPS)
                res = run_cell(d, d_y, cfg, seeds, n_samples=samples, methods=extra).summary()
                cells.append({"dim": d, "obs_dim": d_y, "steps": n, **res})
                if not as_json:  # each cell's numbers as it finishes, so a long run's finished cells are kept
                    click.echo(f"  done {_gmm_row(cells[-1], cols)}", err=True)
    report = {"problems": seeds, "samples": samples, "step_rule": step_rule, "zeta": zeta, "cells": cells}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"GMM posterior benchmark: sliced W1 to exact posterior samples, mean over problems {seeds} "
               f"(+-95% interval), {samples} samples, step rule {step_rule!r}, zeta'={zeta}")
    click.echo(header)
    click.echo("|---|---|---|" + "---|" * len(cols))
    for c in cells:
        click.echo(_gmm_row(c, cols))


def _gmm_row(c: dict, cols: tuple[str, ...]) -> str:
    """One cell of `dps bench gmm` as a markdown table row: d, d_y, steps, then mean +- 95% interval per column."""
    cell = " | ".join(f"{c[k]['mean']:.3f}" + ("" if c[k]["ci95"] is None else f" +- {c[k]['ci95']:.3f}") for k in cols)
    return f"| {c['dim']} | {c['obs_dim']} | {c['steps']} | {cell} |"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``dps`` command line: it declares the commands and their options, turns names into objects (a run
specification, an Execution on the chosen device) and calls one function of the library per command.

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

from .solvers.dps import STEP_RULES
from .solvers.methods import METHODS
from .tasks import DEFAULT_PRESET, STEP_SIZES, TASK_NAMES

_DEBUG = {"on": False}


def _debug() -> bool:
    return _DEBUG["on"] or os.environ.get("DPS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class _Group(click.Group):
    """The top-level group: turns exceptions into one-line errors (see the module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's entry point, with its usage errors and an interruption each in one line."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f"`{exc.ctx.command_path} --help`" if exc.ctx is not None else "`dps --help`"
            click.echo(f"Error: {exc.format_message()} (see {where})", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("\nError: interrupted; rerun the same command to resume (finished results are kept)", err=True)
            sys.exit(130)

    def invoke(self, ctx: click.Context):
        from .errors import user_message

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if _debug():
                raise
            message, status = user_message(exc)
            err = click.ClickException(message)
            err.exit_code = status
            raise err from None


# ------------------------------------------------------------------------------------------- option groups
def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not items or any(v <= 0 for v in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return items


def _choice_list(choices, what: str):
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items or any(v not in choices for v in items):
            raise click.BadParameter(f"expected comma-separated {what} from {', '.join(map(str, choices))}, "
                                     f"got {value!r}")
        return [choices[v] if isinstance(choices, dict) else v for v in items]
    return parse


def device_option(fn):
    """--device: where everything of the run lives (decided once, here)."""
    return click.option("--device", default=None, metavar="DEVICE",
                        help="cpu, cuda, cuda:N or mps  [default: cuda when PyTorch sees a GPU, else cpu; under "
                             "torchrun each process takes the GPU of its local rank]")(fn)


def network_options(fn):
    """--precision, --checkpointing, --compile: how the network runs (the run's Execution)."""
    fn = click.option("--compile", "compile_network", is_flag=True, default=None,
                      help="torch.compile the network (needs a C++ compiler on the CPU; compiles on first use)")(fn)
    fn = click.option("--checkpointing", is_flag=True, default=None,
                      help="recompute the network's blocks in the backward pass: less memory, more time")(fn)
    return click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
                        help="dtype of the network's forward and VJP (autocast); the iterate stays float32  "
                             "[default: fp32, or a run.json's]")(fn)


def grid_options(fn):
    """--grid, --rho, --sigma-min, --sigma-max: the noise-level grid of the methods that take one."""
    from .diffusion.grid import GRID_KINDS

    fn = click.option("--sigma-max", type=click.FloatRange(0, min_open=True), default=None, metavar="S",
                      help="the grid's highest noise level (edm, ve; clamped to the model's)")(fn)
    fn = click.option("--sigma-min", type=click.FloatRange(0, min_open=True), default=None, metavar="S",
                      help="the grid's lowest noise level (edm, ve; clamped to the model's)")(fn)
    fn = click.option("--rho", type=click.FloatRange(0, min_open=True), default=None, metavar="RHO",
                      help="the edm grid's exponent  [default: 7]")(fn)
    return click.option("--grid", type=click.Choice(list(GRID_KINDS)), default=None,
                        help="noise levels of the methods that take a grid (dps, pigdm, tds, daps, latent_dps, latent_daps): vp = the VP "
                             "model's respaced training steps, edm = EDM's rho grid, ve = the geometric grid  "
                             "[default: the model's own; daps: edm]")(fn)


def prompt_options(fn):
    """--prompt, --guidance-scale: the text condition of a text-conditioned latent model (Stable Diffusion)."""
    fn = click.option("--guidance-scale", type=click.FloatRange(0), default=None, metavar="W",
                      help="classifier-free guidance scale of the prompt (1: the prompt's branch alone)  [default: 1, "
                           "or a run.json's]")(fn)
    return click.option("--prompt", default=None, metavar="TEXT",
                        help="prompt of a text-conditioned latent model  [default: the empty prompt, or a "
                             "run.json's]")(fn)


def _grid(grid, rho, sigma_min, sigma_max) -> dict:
    return {"grid": grid, "rho": rho, "sigma_min": sigma_min, "sigma_max": sigma_max}


def _execution(device, precision=None, checkpointing=None, compile_network=None):
    """The Execution of a command: its device chosen once, here."""
    from .execution import Execution

    network = {"precision": precision, "checkpointing": checkpointing, "compile": compile_network}
    return Execution.on(device, **{k: v for k, v in network.items() if v is not None})


def _png(path: Path) -> Path:
    """An output image path: a PNG file (the images are written losslessly as PNG)."""
    if path.suffix.lower() != ".png":
        raise click.BadParameter(f"{path} is not a .png file: the grid is written as PNG; give a path ending in .png")
    return path


def _pairs(items, option: str) -> dict[str, str]:
    """NAME=VALUE items as a dict (one value per name), or a one-line usage error."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip() or name.strip() in out:
            raise click.BadParameter(f"expected METHOD=PRESET, each method once; got {item!r}", param_hint=option)
        out[name.strip()] = value.strip()
    return out


_TASKS_HELP = f"a shipped task ({', '.join(TASK_NAMES)}) or a task YAML/JSON file (a run.json works)"
_MODEL_HELP = ("prior: an embedded name (default, digits, digits-latent), a diffusers folder (a Stable Diffusion or LDM "
               "folder included), a .safetensors file of dps train, "
               "or a guided-diffusion .pt checkpoint")


# ------------------------------------------------------------------------------------------------ commands
@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="dps", message="dps %(version)s")
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors (or set DPS_DEBUG=1)")
@click.option("--threads", type=click.IntRange(1), default=None, metavar="N",
              help="intra-op CPU threads of this process (default: torch's, or the cores divided by the "
                   "processes under torchrun); give each of several concurrent jobs its share")
def main(debug: bool, threads: int | None) -> None:
    """Diffusion Posterior Sampling (Chung et al., ICLR 2023) for noisy inverse problems.

    \b
    A first check (seconds, no network):    dps example
    The embedded model on every task:      dps demo
    Your own images:                        dps solve --task super_resolution --input photos/ --out runs/sr \\
                                                --model models/ffhq_10m.pt
    """
    _DEBUG["on"] = debug
    if threads is not None:
        from .distributed import set_threads

        set_threads(threads)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/example"), metavar="DIR",
              help="run folder: figure.png, metrics.json, metrics.md (a rerun resumes)")
@click.option("--steps", type=click.IntRange(1, 1000), default=200, metavar="N", help="DPS steps per task")
@click.option("--samples", type=click.IntRange(1, 16), default=3, metavar="K", help="posterior samples per task")
@click.option("--seed", type=click.IntRange(0), default=0, metavar="S")
@device_option
def example(out: Path, steps: int, samples: int, seed: int, device) -> None:
    """DPS on every measurement model of the paper with an exact (pattern-mixture) prior: no network, a minute."""
    from .runs.example import run_example

    if run_example(out, steps=steps, samples=samples, seed=seed, execution=_execution(device)) is None:
        return  # a torchrun worker other than rank 0
    click.echo((out / "metrics.md").read_text())
    click.echo(f"wrote {out / 'figure.png'}, {out / 'metrics.json'} ({steps} steps per task)")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="run folder (state, model.safetensors, loss.csv, loss.png); rerun to resume")
@click.option("--data", default="digits", metavar="DATA",
              help="'digits' (embedded data set, training split) or an image folder")
@click.option("--steps", type=click.IntRange(1), default=6000, metavar="N", help="total optimiser steps")
@click.option("--batch-size", type=click.IntRange(1), default=64, metavar="B")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-4, metavar="LR")
@click.option("--ema-decay", type=click.FloatRange(0, 1), default=0.999, metavar="D")
@click.option("--grad-clip", type=click.FloatRange(0, min_open=True), default=1.0, metavar="C")
@click.option("--seed", type=click.IntRange(0), default=0, metavar="S")
@click.option("--checkpoint-every", type=click.IntRange(1), default=250, metavar="N")
@click.option("--unet", "unet_json", default=None, metavar="JSON|FILE",
              help="UNet create_model keywords as JSON or a JSON/YAML file (default: the digits architecture)")
@click.option("--image-size", type=click.IntRange(1), default=None, metavar="PX",
              help="override unet.image_size (a multiple of 2^(levels-1): 4 for the digits UNet)")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="override unet.in_channels")
@click.option("--hflip", is_flag=True, help="random horizontal flips (not for digits)")
@device_option
def train(out, data, steps, batch_size, lr, ema_decay, grad_clip, seed, checkpoint_every, unet_json, image_size,
          channels, hflip, device) -> None:
    """DDPM training (epsilon prediction) of the guided-diffusion UNet; resumable, seeded.

    Example: dps train --out runs/digits --steps 6000
    """
    from .train import TrainConfig, train as run_train, unet_config

    cfg = TrainConfig(data=data, unet=unet_config(unet_json, image_size, channels), steps=steps,
                      batch_size=batch_size, lr=lr, ema_decay=ema_decay, grad_clip=grad_clip, seed=seed,
                      checkpoint_every=checkpoint_every, hflip=hflip)
    run_train(cfg, out, device=_execution(device).torch_device)
    written = [p for p in (out / "loss.csv", out / "loss.png") if p.exists()]  # loss.png once a row is logged
    click.echo(f"wrote {out / 'model.safetensors'} (EMA weights), " + ", ".join(map(str, written)))


@main.command()
@click.option("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
@click.option("--config", default=None, metavar="PRESET|FILE", help="guided-diffusion config of a .pt checkpoint")
@click.option("--n", type=click.IntRange(1), default=64, metavar="N", help="number of samples")
@click.option("--steps", type=click.IntRange(1), default=250, metavar="N",
              help="reverse steps: the length of the model's own grid (a VP model's training steps respaced)")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim"]), default="ddpm")
@click.option("--eta", type=click.FloatRange(0, 1), default=0.0, metavar="ETA", help="DDIM eta")
@click.option("--seed", type=click.IntRange(0), default=0, metavar="S")
@click.option("--batch-size", type=click.IntRange(1), default=64, metavar="B", help="samples per network call")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/samples.png"),
              metavar="PNG", callback=lambda ctx, param, value: _png(value),
              help="grid image (PNG); the samples also go to OUT with suffix .pt")
@device_option
def sample(model, config, n, steps, sampler, eta, seed, batch_size, out, device) -> None:
    """Unconditional samples from a prior, as a grid image."""
    from .models.loading import load_model
    from .runs.sampling import run_sample

    dev = _execution(device).torch_device
    run_sample(load_model(model, config, device=dev), n, steps, seed, out, sampler, eta, batch_size, dev)
    click.echo(f"wrote {out} ({n} samples, {steps} {sampler} steps, seed {seed}, {dev})")


@main.command("train-classifier")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="safetensors file (default: the embedded dps/assets/digits_classifier.safetensors)")
@click.option("--epochs", type=click.IntRange(1), default=20, metavar="N")
@click.option("--seed", type=click.IntRange(0), default=0, metavar="S")
@device_option
def train_classifier_cmd(out, epochs, seed, device) -> None:
    """Train the digit classifier that scores the embedded prior (training split only)."""
    from .metrics.digits_classifier import CLASSIFIER_FILE, save_classifier, train_classifier

    model, stats = train_classifier(epochs=epochs, seed=seed, device=_execution(device).torch_device)
    save_classifier(model, stats, out or CLASSIFIER_FILE)
    click.echo(f"wrote {out or CLASSIFIER_FILE}: train accuracy {stats['train_acc']:.4f}, "
               f"held-out accuracy {stats['held_out_acc']:.4f}")


@main.command()
@click.option("--task", "task_name", required=True, metavar="TASK", help=_TASKS_HELP)
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True, path_type=Path), metavar="PATH",
              help="image files or folders (repeatable)")
@click.option("--measurement", "measurements", multiple=True, type=click.Path(exists=True, path_type=Path),
              metavar="FILE", help="measurement tensors (.pt) instead of images (repeatable)")
@click.option("--operator", "operator_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, metavar="FILE", help="operator.pt of an earlier run (its mask/kernel/latent)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR")
@click.option("--method", type=click.Choice(list(METHODS)), default=None,
              help="reconstruction method (`dps methods` lists them with their settings)  [default: dps, or a "
                   "run.json's]")
@click.option("--method-preset", default=None, metavar="NAME",
              help="named settings of the method from its paper (`dps methods`), e.g. daps-1k; instead of --nfe  "
                   "[default: none, or a run.json's]")
@click.option("--model", default=None, metavar="MODEL", help=_MODEL_HELP + "  [default: default (the embedded "
              "1 x 32 x 32 digits model), or a run.json's]")
@click.option("--config", "model_config", default=None, metavar="PRESET|FILE",
              help="guided-diffusion config of a .pt checkpoint (ffhq256, imagenet256 or a file)")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, metavar="N",
              help="override the task's steps (zeta' then scales by sqrt(task steps / N))")
@click.option("--nfe", type=click.IntRange(1, 100_000), default=None, metavar="N",
              help="run the method at this many network evaluations per sample (its budget rule, `dps methods`)")
@click.option("--samples", type=click.IntRange(1, 64), default=None, metavar="K",
              help="posterior samples K per image  [default: 1, or a run.json's]")
@click.option("--seed", type=click.IntRange(0), default=None, metavar="S", help="[default: 0, or a run.json's]")
@click.option("--noise", default=None, metavar="MODEL", help="override the task's noise: gaussian:SIGMA or poisson:RATE")
@click.option("--preset", type=click.Choice(list(STEP_SIZES)), default=None,
              help=f"step sizes (and for 'authors' their operators) of a preset  [default: the task's zeta', else "
                   f"{DEFAULT_PRESET}]")
@click.option("--step-size", "zeta", type=click.FloatRange(0), default=None, metavar="ZETA", help="override zeta'")
@click.option("--step-rule", type=click.Choice(list(STEP_RULES)), default=None, help="override the step rule")
@click.option("--select", type=click.Choice(["first", "best-residual"]), default=None,
              help="which sample goes to recon/ when K > 1 (the task's choice by default)")
@click.option("--batch-size", type=click.IntRange(1), default=4, metavar="B", help="images per batch")
@click.option("--resize", type=click.Choice(["error", "resize", "center-crop"]), default="error",
              help="what to do with images whose size differs from the model's")
@click.option("--convert-channels", is_flag=True, help="convert grey <-> RGB images to the model's channels")
@click.option("--progress-frames", type=click.IntRange(0), default=0, metavar="F",
              help="record x0_hat at this many evenly spaced steps (progress/; shown by dps figure)")
@click.option("--kernel-wizard", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="GOPRO_wVAE.pth: nonlinear_blur then uses the KernelWizard blur of the paper")
@grid_options
@prompt_options
@network_options
@device_option
def solve(task_name, inputs, measurements, operator_file, out, method, method_preset, model, model_config, steps, nfe,
          samples, seed, noise, preset, zeta, step_rule, select, batch_size, resize, convert_channels, progress_frames,
          kernel_wizard, grid, rho, sigma_min, sigma_max, prompt, guidance_scale, precision, checkpointing,
          compile_network, device) -> None:
    """A reconstruction method (DPS by default) on your images or measurements, into a reproducible run folder.

    \b
    Examples:
      dps solve --task inpainting_box --input digits/ --out runs/box
      dps solve --task super_resolution --model models/ffhq_10m.pt --input ffhq/ --out runs/sr --device cuda
      dps solve --task runs/sr/run.json --input more/ --out runs/sr2      # the same settings again
    """
    from .runs.solve import run_solve
    from .runs.spec import Overrides, resolve

    from .tasks import kernel_wizard_operator

    operator = kernel_wizard_operator(task_name, kernel_wizard) if kernel_wizard is not None else None
    overrides = Overrides(noise=noise, operator=operator, select=select, step_rule=step_rule, preset=preset,
                          step_size=zeta, steps=steps, method=method, method_preset=method_preset, nfe=nfe,
                          model=model, model_config=model_config, prompt=prompt, guidance_scale=guidance_scale,
                          seed=seed, samples=samples, device=device,
                          precision=precision, checkpointing=checkpointing, compile=compile_network,
                          **_grid(grid, rho, sigma_min, sigma_max))
    spec = resolve(task_name, overrides)
    record = run_solve(spec, out, images=list(inputs) or None, measurements=list(measurements) or None,
                       operator_file=operator_file, batch_size=batch_size, resize=resize,
                       convert_channels=convert_channels, progress_frames=progress_frames)
    if not record:  # a torchrun worker other than rank 0
        return
    done = record["images"]
    scores = [v["psnr"] for v in done.values() if "psnr" in v]
    msg = f"{len(done)} image(s) in {out} ({spec.execution.device})"
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
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PNG",
              help="output PNG (default: RUN_DIR/figure.png, or figure_<task>.png for a bench folder)")
@click.option("--max-images", type=click.IntRange(1), default=8, metavar="N")
def figure(run_dir, out, max_images) -> None:
    """Paper-style grid of a dps solve, bench images, demo or example folder (plus x0_hat progress strips)."""
    from .runs.figures import figure_for

    paths = figure_for(run_dir, out, max_images)
    click.echo("wrote " + ", ".join(map(str, paths)))


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"), metavar="DIR",
              help="run folder: figure.png, metrics.json, metrics.md and per-image results (a rerun resumes)")
@click.option("--model", default="default", metavar="MODEL",
              help="a 1 x 32 x 32 digits prior (default: the embedded model; digits-latent runs latent DPS)")
@click.option("--n", "--num-images", "n", type=click.IntRange(1, 359), default=None, metavar="N",
              help="held-out images per task (spell it --num-images under torchrun, whose parser claims --n)  "
                   "[default: the demo's]")
@click.option("--samples", type=click.IntRange(1, 16), default=None, metavar="K",
              help="DPS samples per image  [default: the demo's]")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, metavar="N",
              help="DPS steps (respaced; zeta' scales with them)  [default: the demo's]")
@click.option("--seed", type=click.IntRange(0), default=0, metavar="S")
@click.option("--tasks", default=None, metavar="NAMES", help="comma-separated subset of the demo's tasks")
@network_options
@device_option
def demo(out, model, n, samples, steps, seed, tasks, precision, checkpointing, compile_network, device) -> None:
    """DPS with the embedded model on every task of the paper, on held-out digits (latent DPS with digits-latent)."""
    from .runs.demo import DEMO_DEFAULTS, run_demo

    chosen = {"n": n, "samples": samples, "steps": steps}
    report = run_demo(out, model=model, seed=seed, tasks=tasks.split(",") if tasks else None,
                      execution=_execution(device, precision, checkpointing, compile_network),
                      **{k: v if v is not None else DEMO_DEFAULTS[k] for k, v in chosen.items()})
    if report is None:
        return
    click.echo((out / "metrics.md").read_text())
    click.echo(f"wrote {out / 'figure.png'}, {out / 'metrics.json'}, {out / 'metrics.md'}")


@main.group()
def bench() -> None:
    """Benchmarks: images (the paper's tables), gmm (exact posteriors), speed, prior."""


@bench.command("prior")
@click.option("--model", default="default", metavar="MODEL", help="a 32 x 32 grey digits prior (default: the embedded model)")
@click.option("--n", type=click.IntRange(16), default=359, metavar="N", help="unconditional samples")
@click.option("--steps", type=click.IntRange(1, 1000), default=250, metavar="N")
@click.option("--seed", type=click.IntRange(0), default=0, metavar="S")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PNG",
              help="also write the first 64 samples as a grid PNG")
@click.option("--json", "as_json", is_flag=True)
@device_option
def bench_prior(model, n, steps, seed, grid, as_json, device) -> None:
    """Quality of a digits prior without downloads: the embedded classifier's confidence, class evenness
    and Frechet distance (samples vs held-out, next to train vs held-out)."""
    from .bench.prior import prior_bench_text, run_prior_bench
    from .models.loading import load_model

    dev = _execution(device).torch_device
    q = run_prior_bench(load_model(model, device=dev), model, n, steps, seed, grid, dev)
    click.echo(json.dumps(q, indent=2) if as_json else prior_bench_text(q, n))


@bench.command("images")
@click.option("--methods", default="dps", metavar="NAMES", help="comma-separated methods (`dps methods`)")
@click.option("--tasks", default="super_resolution,inpainting_box,inpainting_random,gaussian_blur,motion_blur",
              metavar="TASKS", help=f"comma-separated: {_TASKS_HELP}")
@click.option("--n", "--num-images", "n", type=click.IntRange(1), default=8, metavar="N",
              help="number of images (spell it --num-images under torchrun, whose parser claims --n)")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, metavar="N", help="override every task's steps")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR")
@click.option("--data", default=None, metavar="DIR", help="image folder (default: the embedded model's held-out digits)")
@click.option("--model", default="default", metavar="MODEL", help=_MODEL_HELP)
@click.option("--config", "model_config", default=None, metavar="PRESET|FILE",
              help="guided-diffusion config of a .pt checkpoint")
@click.option("--seed", type=click.IntRange(0), default=0, metavar="S")
@click.option("--batch-size", type=click.IntRange(1), default=8, metavar="B")
@click.option("--preset", type=click.Choice(list(STEP_SIZES)), default=None,
              help=f"step-size preset for every task  [default: the tasks' zeta', else {DEFAULT_PRESET}]")
@click.option("--samples", type=click.IntRange(1, 64), default=1, metavar="K",
              help="samples K per image; tasks with select: best-residual keep the lowest-residual one (the "
                   "paper's best of 4 for phase retrieval), the others sample 0")
@click.option("--nfe", type=click.IntRange(1, 100_000), default=None, metavar="N",
              help="run every method at this many network evaluations per sample (its budget rule in the method "
                   "table); methods without a network keep their settings")
@click.option("--method-preset", "method_presets", multiple=True, metavar="METHOD=PRESET",
              help="run METHOD with one of its presets (`dps methods`), e.g. daps=daps-1k; repeatable; not with --nfe")
@grid_options
@prompt_options
@network_options
@device_option
def bench_images(methods, tasks, n, steps, out, data, model, model_config, seed, batch_size, preset, samples,
                 nfe, method_presets, grid, rho, sigma_min, sigma_max, prompt, guidance_scale, precision, checkpointing,
                 compile_network, device) -> None:
    """Methods x tasks over N images; per-image results and the paper's table layout (resumable).

    Example: dps bench images --methods dps,ddrm --tasks super_resolution,inpainting_box --n 8 --out runs/bench
    """
    from .runs.bench import BenchSettings, run_bench
    from .runs.spec import Overrides

    if nfe is not None and steps is not None:
        raise click.UsageError("--nfe sets each method's steps; leave out --steps")
    settings = BenchSettings(methods=methods.split(","), tasks=tasks.split(","), n=n, data=data, batch_size=batch_size,
                             overrides=Overrides(steps=steps, preset=preset, nfe=nfe, model=model,
                                                 model_config=model_config, seed=seed, samples=samples,
                                                 prompt=prompt, guidance_scale=guidance_scale,
                                                 **_grid(grid, rho, sigma_min, sigma_max)),
                             method_presets=_pairs(method_presets, "--method-preset"))
    table = run_bench(settings, out, execution=_execution(device, precision, checkpointing, compile_network))
    if not table:  # a torchrun worker other than rank 0: rank 0 writes the tables
        return
    if table["fid_lpips"] != "ok":
        click.echo(f"FID and LPIPS: {table['fid_lpips']}; those columns read n/a", err=True)
    click.echo((out / "table.md").read_text())


@bench.command("speed")
@click.option("--model", default="default", metavar="MODEL", help=_MODEL_HELP + " (ignored with --arch)")
@click.option("--config", "model_config", default=None, metavar="PRESET|FILE",
              help="guided-diffusion config of a .pt checkpoint")
@click.option("--arch", type=click.Choice(["ffhq256", "imagenet256", "sd15"]), default=None,
              help="measure this architecture with random weights instead of --model: a guided-diffusion one, or "
                   "sd15 (Stable Diffusion 1.5's UNet and autoencoder, guidance scale 7.5)")
@click.option("--image-size", type=click.IntRange(1), default=None, metavar="PX",
              help="image size of --arch (default: 256, a multiple of 32; sd15: 512, a multiple of 64)")
@click.option("--batch", type=click.IntRange(1), default=1, metavar="B", help="measurements B per call")
@click.option("--samples", default="1", callback=_int_list, metavar="K,...", help="samples K per measurement")
@click.option("--precision", default="fp32", callback=_choice_list(("fp32", "bf16", "fp16"), "precisions"),
              metavar="P,...", help="comma-separated: fp32, bf16, fp16")
@click.option("--checkpointing", default="off", callback=_choice_list({"off": False, "on": True}, "values"),
              metavar="on|off,...", help="comma-separated on/off")
@click.option("--compile", "compile_network", default="off",
              callback=_choice_list({"off": False, "on": True}, "values"), metavar="on|off,...",
              help="comma-separated on/off")
@click.option("--steps", type=click.IntRange(1), default=3, metavar="N", help="DPS / unconditional steps per timed run")
@click.option("--repeats", type=click.IntRange(1), default=5, metavar="N", help="timed repeats (medians are reported)")
@click.option("--measure", default="forward,floor,dps_step,uncond_step", metavar="Q,...",
              help="comma-separated quantities to measure (fewer: faster, e.g. floor,dps_step for memory tables)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="also write the report as JSON to this file (rewritten after every row)")
@device_option
def bench_speed(model, model_config, arch, image_size, batch, samples, precision, checkpointing, compile_network,
                steps, repeats, measure, json_out, device) -> None:
    """Network forward, the floor (forward + VJP), the DPS step and the unconditional step; peak memory.

    Example: dps bench speed --arch ffhq256 --precision fp32,bf16 --device cuda
    """
    from .bench.speed import SpeedSettings, run_speed_command

    settings = SpeedSettings(batch=batch, samples=tuple(samples), precision=tuple(precision),
                             checkpointing=tuple(checkpointing), compile=tuple(compile_network), repeats=repeats,
                             steps=steps, measure=tuple(m.strip() for m in measure.split(",") if m.strip()))
    text = run_speed_command(settings, _execution(device).torch_device, model=model, model_config=model_config,
                             arch=arch, image_size=image_size, json_out=json_out,
                             log=lambda line: click.echo(line, err=True))
    click.echo(text, nl=False)


def _even_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    items = _int_list(ctx, param, value)
    if any(v % 2 for v in items):
        raise click.BadParameter(f"the benchmark's dimensions must be even, got {value!r}")
    return items


def _gmm_methods(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from .bench.gmm import gmm_methods

    if value is None:
        return None
    extra = tuple(m.strip() for m in value.split(",") if m.strip() and m.strip() != "dps")
    unknown = sorted(set(extra) - set(gmm_methods(latent_dim=2)))  # every method the benchmark can run
    if unknown:
        raise click.BadParameter(f"method(s) {', '.join(unknown)} do not apply to this benchmark or do not exist; "
                                 f"available: {', '.join(gmm_methods(latent_dim=2))} (the latent ones with --latent-dim)")
    return extra


@bench.command("gmm")
@click.option("--dim", "dims", default="8", callback=_even_list, metavar="D,...", help="dimension(s) d (even)")
@click.option("--obs-dim", "obs_dims", default="1,2,4", callback=_int_list, metavar="D,...",
              help="observation dimension(s) d_y")
@click.option("--steps", "--nfe", "steps_list", default="100", callback=_int_list, metavar="N,...",
              help="network evaluations per sample: DPS's steps, every other method's budget")
@click.option("--problems", type=click.IntRange(1), default=5, metavar="N", help="problems (seeds) per cell")
@click.option("--first-seed", type=click.IntRange(0), default=0, metavar="S", help="seed of the first problem")
@click.option("--samples", type=click.IntRange(2), default=2000, metavar="N", help="samples per problem")
@click.option("--step-size", "zeta", type=click.FloatRange(0), default=None, metavar="ZETA",
              help="zeta' (default: the documented GMM default of the step rule)")
@click.option("--step-rule", type=click.Choice(list(STEP_RULES)), default="variance",
              help="DPS step-size rule; 'paper' is Appendix C.2's zeta'/||r||")
@click.option("--methods", "extra", default=None, callback=_gmm_methods, metavar="NAMES",
              help="also run comparison methods (those of the method table that apply to a matrix operator with "
                   "Gaussian noise, e.g. dps,ddrm,mcg)  [default: dps; with --latent-dim, dps and every latent method "
                   "that applies (with --grid, those that take a grid)]")
@click.option("--latent-dim", type=click.IntRange(2), default=None, metavar="D",
              help="latent problems: z from the mixture in D dimensions (even, below --dim), x = W z + b with a known "
                   "linear decoder; latent methods sample z, pixel methods x, both against the exact posterior of x")
@click.option("--parameterization", type=click.Choice(["vp", "ve", "edm"]), default="vp",
              help="the analytic prior as a VP epsilon network (its linear schedule), a VE score network (sigma "
                   "0.01 to 100) or an EDM-preconditioned network (sigma 0.002 to 80)")
@grid_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@device_option
def bench_gmm(dims, obs_dims, steps_list, problems, first_seed, samples, zeta, step_rule, extra, latent_dim,
              parameterization, grid, rho, sigma_min, sigma_max, as_json, device) -> None:
    """Sliced Wasserstein distance of DPS (and other methods) to the exact Gaussian-mixture posterior.

    Per cell: each method, prior samples ("knows nothing about y") and a second exact sample set (the
    floor). The methods run the analytic prior in float64 on the device; the problems, the exact samples and
    the distances are computed on the CPU.
    """
    from .bench.gmm import gmm_header, gmm_markdown, gmm_row, latent_methods, run_gmm_bench
    from .solvers.methods import METHODS

    if extra is None:  # the default comparison: the latent methods that take this run's options
        chosen_grid = (grid, rho, sigma_min, sigma_max) != (None, None, None, None)
        extra = tuple(m for m in latent_methods(parameterization) if not chosen_grid or METHODS[m].takes_grid) \
            if latent_dim is not None else ()
    seeds = list(range(first_seed, first_seed + problems))
    shown = []

    def on_cell(cell: dict) -> None:  # each cell's numbers as it finishes, so a long run's finished cells are kept
        if not as_json:
            if not shown:
                click.echo(f"  cells as they finish: {gmm_header(('dps', *extra, 'prior', 'floor'))}", err=True)
                shown.append(True)
            click.echo(f"  done {gmm_row(cell, ('dps', *extra, 'prior', 'floor'))}", err=True)

    report = run_gmm_bench(dims, obs_dims, steps_list, seeds, samples, zeta, step_rule, extra, on_cell,
                           form=parameterization, grid=_grid(grid, rho, sigma_min, sigma_max), latent_dim=latent_dim,
                           device=_execution(device).torch_device)
    click.echo(json.dumps(report, indent=2) if as_json else gmm_markdown(report).rstrip("\n"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

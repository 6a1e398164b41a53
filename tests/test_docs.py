"""The README and the documentation as users read them: every Python snippet runs as written (against small
stand-ins for checkpoints the tests cannot have), every command line names only options the command has,
the quick ones run and print what the page says, the method table is `dps methods`, every repository path
exists, no page speaks of how the project is developed, and the paper's step sizes are the presets'."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import dps
from dps.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced code block of a Markdown page."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((m.group(1), "\n".join(body), start))
        i += 1
    return blocks


def all_blocks(lang: str) -> list[tuple[Path, str, int]]:
    return [(p, code, line) for p in PAGES for (lg, code, line) in fenced_blocks(p) if lg == lang]


PYTHON = all_blocks("python")


def test_the_pages_have_snippets():
    """The collection below is not empty by accident: the pages hold this many Python snippets."""
    assert len(PYTHON) >= 7, [(_page_id(p), n) for p, _, n in PYTHON]
    assert len(all_blocks("bash")) >= 10


# --------------------------------------------------------------------------------------- Python snippets
@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tiny_model_path):
    """A working folder with the files the snippets name: a digit image, a small guided-diffusion .pt that
    needs image_size and heads, small diffusers folders (VP, VE, EDM), a model of dps train; and small priors that stand in
    for the published checkpoints (their files are 0.4 and 2.2 GB)."""
    from dps.data.digits import digits_split
    from dps.images import save_image
    from dps.models.loading import load_model, save_unet_safetensors
    from dps.models.unet import UNetModel

    work = tmp_path_factory.mktemp("snippets")
    x, _ = digits_split("held_out")
    save_image(x[0], work / "digit.png")
    (work / "models").mkdir()
    torch.manual_seed(0)
    adm = UNetModel(dict(image_size=64, in_channels=3, num_channels=64, channel_mult="1,2", num_res_blocks=1,
                         attention_resolutions="32", num_head_channels=64, learn_sigma=True))
    torch.save(adm.state_dict(), work / "models" / "my_adm.pt")
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(work / "models" / "ddpm-digits" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(work / "models" / "ddpm-digits" / "scheduler")
    for name, scheduler, fourier in (("ncsnpp-ve", diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0), True),
                                     ("edm-digits", diffusers.EDMEulerScheduler(), False)):
        net = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                    block_out_channels=(32, 32), norm_num_groups=8,
                                    time_embedding_type="fourier" if fourier else "positional",
                                    down_block_types=("DownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "UpBlock2D"))
        net.save_pretrained(work / "models" / name / "unet")
        scheduler.save_pretrained(work / "models" / name / "scheduler")
    from latent_folders import write_tiny_stable_diffusion

    write_tiny_stable_diffusion(work / "models" / "sd15")  # stands in for Stable Diffusion 1.5's folder
    (work / "runs" / "digits").mkdir(parents=True)
    save_unet_safetensors(work / "runs" / "digits" / "model.safetensors", load_model(tiny_model_path).network)
    published = {"models/ffhq_10m.pt", "models/imagenet256.pt"}
    return work, published, str(tiny_model_path)


@pytest.mark.parametrize("path,code,line", PYTHON, ids=[f"{_page_id(p)}:{n}" for p, _, n in PYTHON])
def test_python_snippet_runs_as_written(path, code, line, stand_ins, monkeypatch, capsys):
    work, published, tiny = stand_ins
    real = dps.load_model

    def load_model(source, config=None, device=None):  # the published checkpoints: small stand-ins
        return real(tiny if str(source) in published else source, None if str(source) in published else config,
                    device=device)

    monkeypatch.setattr(dps, "load_model", load_model)
    monkeypatch.chdir(work)
    module = types.ModuleType("snippet")  # a module of its own, as a script has (dataclasses look it up)
    monkeypatch.setitem(sys.modules, "snippet", module)
    exec(compile(code, f"{_page_id(path)}:{line}", "exec"), module.__dict__)


# --------------------------------------------------------------------------------------- command lines
def command_lines(text: str) -> list[str]:
    """Logical lines of a shell block (continuations joined, comments and prompts dropped)."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        line = line[2:] if line.startswith("$ ") else line
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append(current.strip())
        current = ""
    return out


def inline_commands(text: str) -> list[str]:
    """`dps ...` commands written inline (in backticks) in a page's prose and tables."""
    return [m for m in re.findall(r"`((?:torchrun [^`]*-m )?dps [a-z][^`]*)`", text) if "..." not in m]


def dps_arguments(line: str) -> list[str] | None:
    """The arguments after `dps` in a command line (also under torchrun or python -m), or None."""
    words = shlex.split(line)
    for i, w in enumerate(words):
        if w == "dps" and (i == 0 or words[i - 1] == "-m"):
            return words[i + 1:]
    return None


def check_options(args: list[str], where: str, complete: bool = True) -> None:
    """Every option of ``dps ARGS`` exists for its command; Choice options get one of their choices; a
    ``complete`` command line has the command's required options too."""
    import click

    cmd, i = main, 0
    while i < len(args) and args[i].startswith("-"):  # the group's own options
        opt = next((p for p in main.params if args[i].split("=")[0] in p.opts), None)
        assert opt is not None, f"{where}: dps has no option {args[i]}"
        i += 1 if opt.is_flag or "=" in args[i] else 2
    while isinstance(cmd, click.Group):
        assert i < len(args) and args[i] in cmd.commands, f"{where}: no command {args[i:i + 1]} in {cmd.name}"
        cmd, i = cmd.commands[args[i]], i + 1
    params = {o: p for p in cmd.params for o in getattr(p, "opts", [])}
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    positional = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("-"):
            positional += 1
            assert positional <= len(arguments), f"{where}: unexpected argument {word!r} for dps {cmd.name}"
            i += 1
            continue
        name, _, inline = word.partition("=")
        assert name in params, f"{where}: dps {cmd.name} has no option {name}"
        p = params[name]
        if p.is_flag:
            i += 1
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) else None)
        if value is None and not complete:  # prose naming an option: `dps solve --method`
            break
        assert value is not None, f"{where}: {name} needs a value"
        if isinstance(p.type, click.Choice):
            assert value in p.type.choices, f"{where}: {name} {value!r} is not one of {p.type.choices}"
        i += 1 if inline else 2
    for p in cmd.params if complete else ():
        if getattr(p, "required", False) and isinstance(p, click.Option):
            assert any(o in args for o in p.opts), f"{where}: dps {cmd.name} needs {p.opts[0]}"


ALLOWED = ("pip ", "python -c", "mkdocs", "git ", "cd ", "mkdir ", "cp ", "mv ")


def test_every_command_line_names_real_options():
    checked = 0
    for page in PAGES:
        text = page.read_text()
        lines = [(f"{_page_id(page)}:{n}", line, True) for lang, code, n in fenced_blocks(page)
                 if lang in ("bash", "text") for line in command_lines(code) if lang == "bash" or line.startswith("dps ")]
        lines += [(f"{_page_id(page)} (inline)", c, False) for c in inline_commands(text)]  # may name one option
        for where, line, complete in lines:
            args = dps_arguments(line)
            if args is not None:
                check_options(args, where, complete)
                checked += 1
            elif line.startswith(("bash ", "python ")) and not line.startswith("python -c"):
                script = shlex.split(line)[1]
                assert (ROOT / script).is_file(), f"{where}: {script} is not in the repository"
            else:
                assert line.startswith(ALLOWED), f"{where}: unexpected command {line!r}"
    assert checked >= 40


def test_the_examples_in_the_help_texts_name_real_options():
    """`dps COMMAND --help` shows worked examples; they are command lines like the pages'."""
    commands = [(name, c) for name, c in main.commands.items()]
    commands += [(f"bench {n}", c) for n, c in main.commands["bench"].commands.items()]
    shown = 0
    for name, cmd in [("", main), *commands]:
        for line in command_lines(cmd.help or ""):
            line = line.removeprefix("Example: ")
            if line.startswith("dps "):
                check_options(dps_arguments(line), f"dps {name} --help")
                shown += 1
    assert shown >= 6


def _prompts() -> list[tuple[str, str, str]]:
    """($ command, expected output) pairs of the `text` blocks: a shown session is a claim to check."""
    out = []
    for page in PAGES:
        for lang, code, n in fenced_blocks(page):
            lines = code.splitlines()
            if lang == "text" and lines and lines[0].startswith("$ dps "):
                out.append((f"{_page_id(page)}:{n}", lines[0][2:], "\n".join(lines[1:])))
    return out


@pytest.mark.parametrize("where,command,expected", _prompts(), ids=[w for w, _, _ in _prompts()])
def test_shown_sessions_print_what_the_page_says(where, command, expected, tmp_path, monkeypatch):
    """The sessions shown in the pages (errors a user meets first) are run; their output is the page's."""
    from PIL import Image
    import numpy as np

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "digits").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "digits" / "d.png")
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(tmp_path / "photo.png")
    result = CliRunner().invoke(main, shlex.split(command)[1:])
    assert result.output.strip() == expected.strip(), where


def test_quick_commands_run(tmp_path, monkeypatch):
    """The commands of the pages that take seconds run as written, and write what the pages say."""
    monkeypatch.chdir(tmp_path)
    methods = CliRunner().invoke(main, ["methods"])
    assert methods.exit_code == 0 and methods.output.startswith("| name | method |")
    shown = [line for _, code, _ in all_blocks("bash") for line in command_lines(code) if line.startswith("dps example")]
    assert shown
    for line in shown:  # the one-minute check
        result = CliRunner().invoke(main, shlex.split(line)[1:])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / "example" / "figure.png").exists()


# --------------------------------------------------------------------------------------- tables and files
def test_the_method_tables_are_dps_methods():
    """The README and the Methods page show the method table as `dps methods` prints it, entry for entry."""
    from dps.solvers.methods import methods_markdown

    for page in (ROOT / "README.md", ROOT / "docs" / "methods.md"):
        assert methods_markdown() in page.read_text(), page


def test_task_files_shown_are_valid(tmp_path):
    """Every YAML task file in the pages loads (its keys and values are checked)."""
    from dps.tasks import load_task

    shown = [(p, code) for p, code, _ in all_blocks("yaml") if {"operator", "noise"} <= set(yaml.safe_load(code))]
    assert len(shown) >= 2
    for i, (page, code) in enumerate(shown):
        (tmp_path / f"t{i}.yaml").write_text(code)
        task = load_task(tmp_path / f"t{i}.yaml", raw=True)
        assert task.name == yaml.safe_load(code)["name"], page


PATH = re.compile(r"(?<![\w/.-])((?:benchmarks|dps|docs|tests|scripts)/[\w./*-]*[\w*/])")


def test_every_repository_path_in_the_pages_exists():
    for page in PAGES:
        for path in sorted(set(PATH.findall(page.read_text()))):
            hits = list(ROOT.glob(path.rstrip("/"))) if "*" in path else [ROOT / path]
            assert hits and all(h.exists() for h in hits), f"{_page_id(page)}: {path} is not in the repository"
    for page in PAGES:  # relative links
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / link).exists(), f"{_page_id(page)}: link {link} is broken"


WORK_WORDS = re.compile(r"\(issue [0-9]+\)|\bissue [0-9]+\b|\bsessions?\b|these machines|\.\./shared|\bshared/",
                        re.IGNORECASE)


def test_no_page_speaks_of_how_the_project_is_developed():
    """The README, the documentation, the benchmark pages and the docstrings are for users."""
    texts = [*PAGES, *(ROOT / "benchmarks").rglob("*.md"), *(ROOT / "benchmarks").rglob("*.py"),
             *(ROOT / "benchmarks").rglob("*.sh"), *(ROOT / "dps").rglob("*.py"), *(ROOT / "dps").rglob("*.md"),
             *(ROOT / "dps").rglob("*.yaml"), *(ROOT / "scripts").rglob("*")]
    leaks = [f"{_page_id(p)}: {m.group(0)!r}" for p in texts if p.is_file() for m in WORK_WORDS.finditer(p.read_text())]
    assert not leaks, leaks


def test_the_leak_check_can_fail(tmp_path):
    for bad in ("see (issue 12)", "measured in session 8", "no session had a GPU", "on these machines",
                "`shared/reference/`"):
        assert WORK_WORDS.search(bad), bad


# --------------------------------------------------------------------------------------- the paper's step sizes
COLUMNS = {"SR x4": ["super_resolution"], "inpainting (box, random)": ["inpainting_box", "inpainting_random"],
           "Gaussian deblur": ["gaussian_blur"], "motion deblur": ["motion_blur"],
           "phase retrieval": ["phase_retrieval"], "non-uniform deblur": ["nonlinear_blur"]}


def test_step_size_presets_are_the_papers_and_the_authors():
    """The shipped presets, read back through apply_preset, equal Appendix D.1's table and the authors' config
    scales as the Reproducing-the-paper page states them (phase retrieval in the authors' convention: scale / 2)."""
    from dps.tasks import STEP_SIZES, apply_preset, load_task

    text = (ROOT / "docs" / "paper.md").read_text()
    section = text.split("## The step sizes of Appendix D.1")[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    expected = {}
    for row in lines[2:5]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        noise, data = cells[0].lower(), cells[1].lower()
        for col, value in zip(head[2:], cells[2:]):
            for task in COLUMNS[col]:
                expected[(f"paper-{data}", noise, task)] = None if value == "-" else float(value)
    authors = " ".join(section.split("set `scale`")[1].split("\n\n")[0].split())  # one line
    scales = dict(re.findall(r"(SR|inpainting|Gaussian deblur|motion deblur|phase retrieval|nonlinear deblur) "
                             r"([0-9]+\.[0-9]+)", authors))
    names = {"SR": ["super_resolution"], "inpainting": ["inpainting_box", "inpainting_random"],
             "Gaussian deblur": ["gaussian_blur"], "motion deblur": ["motion_blur"],
             "phase retrieval": ["phase_retrieval"], "nonlinear deblur": ["nonlinear_blur"]}
    for key, value in scales.items():
        for task in names[key]:
            for noise in ("gaussian", "poisson"):
                expected[("authors", noise, task)] = float(value) / (2 if task == "phase_retrieval" else 1)
    assert len(expected) == 3 * 7 + 2 * 7  # 3 table rows of 7 tasks and the authors' 7 tasks, both noises
    for (preset, noise, task), value in expected.items():
        base = load_task(task, raw=True)
        base = type(base)(base.name, base.operator, "gaussian:0.025" if noise == "gaussian" else "poisson:1.0",
                          base.dps, base.select)
        if value is None:
            with pytest.raises(ValueError, match="no step size"):
                apply_preset(base, preset)
        else:
            assert apply_preset(base, preset).dps_config().zeta == value, (preset, noise, task)
    assert set(STEP_SIZES) == {"paper-ffhq", "paper-imagenet", "authors"}


# --------------------------------------------------------------------------------------- the site
def test_the_documentation_site_builds(tmp_path):
    """`mkdocs build --strict` (with the docs extra; CI installs it): no broken link, no missing page."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def test_every_shipped_task_and_method_is_documented():
    """A task added to the catalogue (dps/task_presets) or a method added to the table is named in the pages
    users read first."""
    from dps.solvers.methods import METHODS
    from dps.tasks import TASK_NAMES

    tasks = (ROOT / "docs" / "tasks.md").read_text()
    for name in TASK_NAMES:
        assert f"| `{name}` |" in tasks, f"docs/tasks.md does not list the task {name}"
    methods = (ROOT / "docs" / "methods.md").read_text()
    for m in METHODS.values():
        assert f"**{m.title}**" in methods, f"docs/methods.md has no note on {m.title}"


@pytest.mark.calibrated_guard
def test_the_divergence_limits_in_the_docs_are_the_codes():
    """The conventions page states the guards' limits as the code defines them (dps.solvers.divergence)."""
    from dps.solvers import divergence

    page = (ROOT / "docs" / "operators.md").read_text()
    assert f"`ITERATE_LIMIT` = {divergence.ITERATE_LIMIT:g} times" in page
    assert f"`RESIDUAL_LIMIT` = {divergence.RESIDUAL_LIMIT:g} times" in page
    assert f"floored at {divergence.FLOOR:g}" in page

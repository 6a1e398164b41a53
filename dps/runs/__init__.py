"""The application layer: run specifications, the one batch loop, run folders and their layouts, and the
runs behind the commands (solve, bench images, demo, example, sample)."""
from .bench import BenchSettings, run_bench
from .demo import run_demo
from .example import run_example
from .loop import Item, Job, run_items
from .solve import run_solve
from .spec import Overrides, RunSpec, resolve

__all__ = ["BenchSettings", "Item", "Job", "Overrides", "RunSpec", "resolve", "run_bench", "run_demo", "run_example",
           "run_items", "run_solve"]

"""Bring your own model: a torchvision ResNet-18 and its DataLoaders, searched, picked,
applied, saved and reloaded. Run it from the repository root:

    python docs/byo_model.py            # a real search (20 trials)
    python docs/byo_model.py --small    # the test suite's scale: 3 trials, no scan, short timings
                                        # (docs/byo_small.toml)

The task comes from ``docs/examples_module.py`` (``Task.from_loaders``); the search runs
through the command line, which imports the task by its path, as a user would:

    autoprune search --task docs.examples_module:make_task --trials 20

Everything is written to a temporary folder (or ``--workdir``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import autoprune as ap


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a few trials of a briefly trained model (for tests)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the study and the pruned model go")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="autoprune-byo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{workdir / 'byo.db'}"
    factory = "docs.examples_module:make_small_task" if args.small else "docs.examples_module:make_task"
    trials, max_drop = (3, 100.0) if args.small else (20, 2.0)

    # 1. The task: a trained model, validation scores for the search, a held-out test split.
    task = ap.tasks.get_task(factory)
    print(f"unpruned: validation {task.evaluate(task.model):.2f}%, test {task.test(task.model):.2f}%")  # type: ignore[misc]

    # 2. Search from the command line (the same as `autoprune search ...` in a shell).
    beside = Path(sys.executable).with_name("autoprune")  # the console script of this environment
    cli = str(beside) if beside.exists() else shutil.which("autoprune") or "autoprune"
    small = [str(Path(__file__).with_name("byo_small.toml"))] if args.small else []  # shorter timings
    command = [cli, "search", *small, "--task", factory, "--trials", str(trials)]
    command += ["--storage", storage, "--study", "byo", "--max-accuracy-drop", str(max_drop), "--no-report", "--quiet"]
    subprocess.run(command, check=True)

    # 3. Pick the fastest trial within the accuracy budget and apply it to the model.
    results = ap.load_study("byo", storage)
    picked = results.pick(max_accuracy_drop=max_drop, minimize="latency")
    print("picked", picked.summary())
    pruned = picked.apply(task.model, task=task)
    print(f"pruned: validation {task.evaluate(pruned):.2f}%, test {task.test(pruned):.2f}%")  # type: ignore[misc]

    # 4. Recover more with a final fine-tune that distills from the unpruned model.
    assert task.distill_fine_tune is not None
    task.distill_fine_tune(pruned, 20 if args.small else 200)
    print(f"after distillation: test {task.test(pruned):.2f}%")  # type: ignore[misc]

    # 5. Save as plain files and reload: a fresh unpruned model + the schedule + the weights.
    out = ap.save_pruned(pruned, workdir / "pruned", schedule=picked.schedule, example_inputs=task.example_inputs)
    reloaded = ap.load_pruned(out, task.fresh_model)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(task.example_inputs), pruned(task.example_inputs))
    params = sum(p.numel() for p in pruned.parameters()), sum(p.numel() for p in task.model.parameters())
    print(f"saved to {out}: {params[0]:,} of {params[1]:,} parameters; reloaded model gives the same outputs")


if __name__ == "__main__":
    main()

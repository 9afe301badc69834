"""Search, pick, apply, save, reload, compare speed: the README's "apply" example.

Runs end to end on a laptop CPU in a few minutes (a tiny search on the built-in digits task;
the first run also trains the digits model). Everything is written to a temporary folder:

    python docs/apply_example.py

The same from the command line, after ``autoprune search``:

    autoprune apply --study demo --storage sqlite:///demo.db --max-accuracy-drop 1 --out pruned/
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import autoprune as ap

workdir = Path(tempfile.mkdtemp(prefix="autoprune-example-"))
storage = f"sqlite:///{workdir}/demo.db"

# 1. Search: a few pruning schedules of the digits CNN, accuracy against latency.
task = ap.tasks.get_task("digits")
ap.search(task, objectives=["accuracy", "latency"], n_trials=12, storage=storage, study_name="demo", report=False)

# 2. Read the results: the Pareto front as a DataFrame, then pick the fastest trial that
#    loses at most one point of accuracy (an error says what is closest if none does).
results = ap.load_study("demo", storage)
print(results.pareto()[["accuracy", "accuracy_drop", "speedup", "compression", "schedule"]].to_string())
picked = results.pick(max_accuracy_drop=1.0, minimize="latency")
print("picked", picked.summary())

# 3. Apply its schedule to the model: pruned and fine-tuned as in the trial (same parameter
#    count and MACs), plus a longer final fine-tune.
pruned = picked.apply(final_fine_tune_steps=200)
print(f"accuracy {task.evaluate(pruned):.2f} (trial {picked.metrics['accuracy']:.2f})")

# 4. Save as plain files: weights (a state dict), schedule, metrics, per-layer shapes.
out = ap.save_pruned(
    pruned, workdir / "pruned", schedule=picked.schedule, metrics=picked.metrics, example_inputs=task.example_inputs
)

# 5. Reload: a fresh unpruned model + schedule.json give the architecture, then the weights
#    are loaded with torch.load(weights_only=True). No pickled module, nothing executed.
reloaded = ap.load_pruned(out, task.fresh_model)
with torch.inference_mode():
    torch.testing.assert_close(reloaded(task.example_inputs), pruned(task.example_inputs))

# 6. Compare on this machine, timed the way the search times it: the pruned model in
#    alternation with the unpruned one (paired rounds, so the machine's drift cancels), the
#    speedup with its 95% interval; the milliseconds come from the same rounds.
unpruned = task.fresh_model()
speedup = ap.measure_speedup(reloaded, unpruned, task.example_inputs, target="cpu")
before = ap.evaluate(unpruned, task, measure_latency=False)
after = ap.evaluate(reloaded, task, measure_latency=False)
print(
    f"speedup {speedup.ratio:.2f}x (95% interval {speedup.low:.2f} to {speedup.high:.2f}"
    f"{'' if speedup.converged else ', wider than asked'}), latency {speedup.reference_ms:.3f} -> "
    f"{speedup.model_ms:.3f} ms, params {before.params} -> {after.params}, "
    f"accuracy {before.accuracy:.2f} -> {after.accuracy:.2f}"
)

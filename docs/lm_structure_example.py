"""Make a Hugging Face causal language model faster: remove heads, MLP channels and blocks.

Run:  python docs/lm_structure_example.py --workdir /tmp/lms   (about two minutes on 2 cores)

Stand-in for your model: the small Llama-style decoder of ``autoprune.testing.lm`` (grouped-
query attention, 2 blocks, trained here for seconds). With yours: ``ap.Task.for_causal_lm(
AutoModelForCausalLM.from_pretrained(...), train=..., val=..., tokenizer=...)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import autoprune as ap
from autoprune.testing.lm import tiny

parser = argparse.ArgumentParser()
parser.add_argument("--workdir", default="lm-structure-example")
args = parser.parse_args()
work = Path(args.workdir)
torch.set_num_threads(1)

task = tiny()  # a perplexity task: the model, text windows, calibration windows
print(f"dense: validation perplexity {task.evaluate(task.model):.3f}")

# 1. By hand: half the query heads and a quarter of the MLP channels of every block, and the
#    block that changes the hidden state least (ShortGPT's block influence), then 20 steps
#    of distillation from the dense model.
from autoprune.decoder import removal_order, structure_scores  # noqa: E402

least = removal_order(structure_scores(task.model, task.calibration_inputs))[0]
schedule = ap.lm.structure_schedule(task, heads={0: 0.5, 1: 0.5}, mlp={0: 0.25, 1: 0.25})
model = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs, calibration=task.calibration_inputs)
assert task.distill_fine_tune is not None
task.distill_fine_tune(model, 20)
speed = ap.lm.lm_speedups(model, task, budget_s=1.0)  # paired against the dense model
print(f"width: validation perplexity {task.evaluate(model):.3f}, prefill {speed['prefill'].ratio:.2f}x, "
      f"decode {speed['decode'].ratio:.2f}x")  # fmt: skip
shallow = ap.apply_schedule(
    task.model, ap.lm.structure_schedule(task, remove=[least]), example_inputs=task.example_inputs
)
print(f"depth: block {least} removed, validation perplexity {task.evaluate(shallow):.3f}")

# 2. The search: per block heads, MLP channels and whether to keep it; every trial recovered
#    by distillation and timed in both regimes; the objective here is decode speed.
study = ap.lm.search_structure(task, n_trials=6, fine_tune_steps=5, latency="decode", budget_s=0.5,
                               storage=f"sqlite:///{work}/lms.db", study_name="lms")  # fmt: skip
results = ap.load_study("lms", f"sqlite:///{work}/lms.db")
picked = results.pick(max_metric_increase=0.10, minimize="latency")  # fastest within +10% on validation
print(f"picked trial {picked.number}: {picked.metrics['decode_speedup']:.2f}x decode, "
      f"validation perplexity {picked.metrics['perplexity']:.3f}")  # fmt: skip
pruned = picked.apply(task=task)  # re-applies the schedule with the task's calibration and recovery

# 3. Save for Hugging Face. Blocks of differing widths are rebuilt by autoprune's classes
#    (ap.lm.from_pretrained, or from_pretrained(..., trust_remote_code=True)).
ap.lm.save_pretrained(pruned, work / "pruned")
again = AutoModelForCausalLM.from_pretrained(work / "pruned", trust_remote_code=True).eval()
x = task.example_inputs["input_ids"]
with torch.no_grad():
    same = torch.allclose(again(input_ids=x).logits, pruned(input_ids=x).logits, atol=1e-5)
print(f"reloaded: same logits {same}; generate: {again.generate(x[:1, :8], max_new_tokens=8).shape[1]} tokens")

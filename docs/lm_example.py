"""Prune a Hugging Face causal language model: how much to prune each layer.

Run:  python docs/lm_example.py --workdir /tmp/lm   (about a minute on 2 cores)

Stand-in for your model: a small LlamaForCausalLM trained here for a few seconds on Python's
documentation (shipped with Python). With yours, load it with from_pretrained and give its
tokenizer and your text.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from pydoc_data.topics import topics

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import autoprune as ap

parser = argparse.ArgumentParser()
parser.add_argument("--workdir", default="lm-example")
args = parser.parse_args()
work = Path(args.workdir)
work.mkdir(parents=True, exist_ok=True)

# 1. Your model and text (here: a small decoder with grouped-query attention, trained briefly).
torch.manual_seed(0)
config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
model = LlamaForCausalLM(config)
docs = [topics[name] for name in sorted(topics)]
train_text, val_text, test_text = docs[10:], docs[:5], docs[5:10]
tokenizer = ap.lm.ByteTokenizer()  # yours: AutoTokenizer.from_pretrained(...)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
ids = torch.tensor(tokenizer.encode("\n".join(train_text)))
for _ in range(60):
    starts = torch.randint(0, len(ids) - 64, (16,))
    batch = torch.stack([ids[s : s + 64] for s in starts])
    loss = model(input_ids=batch, labels=batch).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()

# 2. A perplexity task: non-overlapping 64-token windows; calibration windows drawn from train.
task = ap.Task.for_causal_lm(model, train=train_text, val=val_text, test=test_text, tokenizer=tokenizer,
                             context_length=64, calibration_windows=16)  # fmt: skip
print(f"dense: validation perplexity {task.evaluate(model):.3f}")

# 3. One-shot, by hand: Wanda at 50% on every linear layer, or 2:4 with SparseGPT.
linears = ap.oneshot.prunable_linears(model)
wanda = ap.Schedule(layers={n: ap.LayerPlan("unstructured", 0.5) for n in linears}, criterion="wanda")
pruned = ap.apply_schedule(model, wanda, example_inputs=None, calibration=task.calibration_inputs)
print(f"uniform Wanda 50%: validation perplexity {task.evaluate(pruned):.3f}")
two_four = ap.Schedule(layers={n: ap.LayerPlan("unstructured", 0.5, pattern="2:4") for n in linears},
                       criterion="sparsegpt")  # fmt: skip
pruned = ap.apply_schedule(model, two_four, example_inputs=None, calibration=task.calibration_inputs)
print(f"2:4 SparseGPT: validation perplexity {task.evaluate(pruned):.3f}")

# 4. Search per-block sparsity at 50% in all (uniform and OWL run first, as references).
storage = f"sqlite:///{work}/lm.db"
ap.lm.search_allocation(task, sparsity=0.5, n_trials=8, storage=storage, study_name="lm", measure_latency=False)
results = ap.load_study("lm", storage)
picked = results.pick(minimize="perplexity")  # the best on validation
print(f"picked {picked.summary()}")

# 5. Apply it and save: a plain Hugging Face model with zeros in it.
best = picked.apply(task=task)
best.save_pretrained(work / "pruned")
again = LlamaForCausalLM.from_pretrained(work / "pruned")
print(f"reloaded: test perplexity {task.test(again):.3f} (trial: {picked.metrics['test_perplexity']:.3f})")

"""docs/lm_example.py (the language-model page's example) runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_language_model_example_runs(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "docs/lm_example.py", "--workdir", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    dense = float(re.search(r"dense: validation perplexity ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    wanda = float(re.search(r"uniform Wanda 50%: validation perplexity ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert 1 < dense < 256 and wanda >= dense * 0.99
    assert "picked trial" in out and "sparsity=0.5" in out
    reloaded, recorded = re.search(r"reloaded: test perplexity ([\d.]+) \(trial: ([\d.]+)\)", out).groups()  # type: ignore[union-attr]
    assert reloaded == recorded  # the saved model is the trial's model
    assert (tmp_path / "pruned" / "config.json").is_file()


@pytest.mark.slow
def test_structure_example_runs(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "docs/lm_structure_example.py", "--workdir", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"width: validation perplexity [\d.]+, prefill [\d.]+x, decode [\d.]+x", out)
    assert re.search(r"depth: block \d removed", out)
    assert re.search(r"picked trial \d+: [\d.]+x decode", out)
    assert "reloaded: same logits True; generate: 16 tokens" in out
    assert (tmp_path / "pruned" / "config.json").is_file() and (tmp_path / "lms.db").is_file()

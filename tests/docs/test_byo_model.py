"""The worked example docs/byo_model.py runs end to end (at a small scale)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bring_your_own_model_example_runs(tmp_path: Path) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # One thread, as conftest gives the tests: on a busy machine more threads only wait on each other.
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "docs/byo_model.py", "--small", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("unpruned: validation ") and ", test " in lines[0]
    assert any(line.startswith("picked ") for line in lines)
    assert any(line.startswith("after distillation: test ") for line in lines)
    assert "reloaded model gives the same outputs" in lines[-1]
    assert (tmp_path / "pruned" / "schedule.json").is_file()
    assert (tmp_path / "byo.db").is_file()


def test_example_task_imports_from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # The factory path that `autoprune search --task` gets; the current folder is searched.
    import autoprune as ap

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(ROOT))])
    monkeypatch.delitem(sys.modules, "docs.examples_module", raising=False)
    module = ap.tasks._import("docs.examples_module")
    assert callable(module.make_task) and callable(module.make_small_task)

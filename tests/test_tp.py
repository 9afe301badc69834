"""Torch-Pruning is imported without the timm (and torchvision) import of its op counter,
and timm stays importable afterwards; a process that loaded timm first keeps it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("timm")
pytestmark = pytest.mark.slow  # a fresh Python process each (5-6 s)


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_torch_pruning_is_imported_without_timm_and_timm_still_imports() -> None:
    out = _run(
        """
        import sys
        from autoprune._tp import torch_pruning
        tp = torch_pruning()
        assert tp is sys.modules["torch_pruning"] and torch_pruning() is tp
        print("timm" in sys.modules, "torchvision" in sys.modules, tp.utils.op_counter.has_timm)
        import timm  # not left hidden
        print(timm.__name__)
        """
    )
    assert out.splitlines() == ["False False False", "timm"]


def test_a_process_that_loaded_timm_keeps_torch_prunings_timm_counter() -> None:
    out = _run(
        """
        import timm
        from autoprune._tp import torch_pruning
        print(torch_pruning().utils.op_counter.has_timm)
        """
    )
    assert out == "True"

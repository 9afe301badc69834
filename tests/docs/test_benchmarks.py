"""docs/benchmarks.md is generated from results/*.json by scripts/benchmarks_doc.py: the
committed page is what the command writes now (a stale page fails here), and each table is
headed by the command, commit, date and machine stored with it, or says they were not recorded."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_doc", ROOT / "scripts" / "benchmarks_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_page_is_what_the_command_writes(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, "scripts/benchmarks_doc.py", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_text() == DOC.read_text(), "docs/benchmarks.md is stale: run python scripts/benchmarks_doc.py"
    # the regeneration command is the page's first instruction
    assert "`python scripts/benchmarks_doc.py`" in DOC.read_text().split("\n\n")[1]


def test_every_stored_result_is_a_section_headed_by_its_run() -> None:
    text = DOC.read_text()
    for path in sorted((ROOT / "results").glob("*.json")):
        meta = json.loads(path.read_text()).get("meta", {})
        start = text.index(f"\n## {path.stem}\n")
        end = text.find("\n## ", start + 1)
        body = text[start : end if end > 0 else len(text)]
        header = next(line for line in body.splitlines() if line.startswith("Command: "))
        for key in ("command", "commit", "date", "machine"):
            assert str(meta.get(key, "not recorded")) in header, (path.name, key)
        assert f"results/{path.stem}.json" in body


def test_old_results_say_not_recorded_and_new_ones_keep_their_table(tmp_path: Path) -> None:
    doc = _module()
    (tmp_path / "bench_old.json").write_text(json.dumps([{"task": "digits", "speedup": 6.2031, "seeds": [0, 1]}]))
    meta = {"command": "python scripts/bench_new.py --x 1", "commit": "abc1234", "date": "2026-12-02 18:00 UTC",
            "machine": "Linux x86_64, 2 CPUs"}  # fmt: skip
    (tmp_path / "bench_new.json").write_text(json.dumps({"meta": meta, "rows": [], "table": "| a |\n|---|\n| 1 |"}))
    text = doc.build(tmp_path)
    assert text == doc.build(tmp_path)  # nothing but the files decides the page
    old = text[text.index("## bench_old") :]
    assert old.splitlines()[2] == (
        "Command: not recorded; commit: not recorded; date: not recorded; machine: not recorded."
    )
    assert "| task | speedup | seeds |" in old and "| digits | 6.203 | 0, 1 |" in old
    new = text[text.index("## bench_new") : text.index("## bench_old")]
    assert (
        "Command: `python scripts/bench_new.py --x 1`; commit: abc1234; date: 2026-12-02 18:00 UTC; "
        "machine: Linux x86_64, 2 CPUs." in new
    )
    assert "| a |\n|---|\n| 1 |" in new

"""The benchmark scripts stay runnable: each one's --quick mode runs and ends with its RESULT line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, *extra: str, tmp_path: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--quiet", *extra],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_paper_table_quick(tmp_path):
    out = run_quick("paper.py", "--out", str(tmp_path / "runs"), "--markdown", str(tmp_path / "paper.md"),
                    tmp_path=tmp_path)
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT digits-vgg16-width_x=")
    table = (tmp_path / "paper.md").read_text()
    assert "| digits | VGG-16 | width |" in table and "Network Slimming" in table
    # the final student was exported and timed beside its teacher
    assert "| - | - | - | - |" not in table.split("| digits |")[1].splitlines()[0]

"""The house style (pyproject.toml): black formats every Python file and ruff finds nothing."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TREES = ["ensdist_fairseq", "tests", "benchmarks", "setup.py"]


def _run(tool, *args):
    return subprocess.run(
        [os.path.join(BIN, tool), *args, *TREES], cwd=ROOT, capture_output=True, text=True
    )


def test_black_formatted():
    r = _run("black", "--check", "--quiet")
    assert r.returncode == 0, "run `black .` (pyproject.toml):\n" + r.stderr[-3000:]


def test_ruff_clean():
    r = _run("ruff", "check", "--output-format", "concise")
    assert r.returncode == 0, r.stdout[-3000:]

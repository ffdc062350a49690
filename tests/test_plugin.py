"""The package as fairseq and users see it: registration, the user-dir path, light pure modules."""

import os
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_importing_after_fairseq_registers_everything():
    r = python(
        "import fairseq, ensdist_fairseq\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "from fairseq.criterions import CRITERION_REGISTRY\n"
        "from fairseq.models import ARCH_MODEL_REGISTRY\n"
        "print('translation_distill' in TASK_REGISTRY, 'token_kd' in CRITERION_REGISTRY,\n"
        "      'dirichlet_transformer' in ARCH_MODEL_REGISTRY)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True"]


def test_user_dir_loader_registers_the_task(tiny_data):
    """fairseq's own --user-dir mechanism (what fairseq-train does) finds the plugin's task."""
    r = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ensdist-path")],
        capture_output=True,
        text=True,
    )
    user_dir = r.stdout.strip()
    assert r.returncode == 0 and os.path.isfile(os.path.join(user_dir, "__init__.py"))
    code = (
        "import argparse, fairseq.utils as u\n"
        f"u.import_user_module(argparse.Namespace(user_dir={user_dir!r}))\n"
        "from fairseq.tasks import TASK_REGISTRY; print('translation_distill' in TASK_REGISTRY)\n"
    )
    r = python(code)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_pure_modules_do_not_import_fairseq():
    r = python(
        "import sys\n"
        "import ensdist_fairseq.losses, ensdist_fairseq.metrics.calibration, ensdist_fairseq.store.format\n"
        "import ensdist_fairseq.store.teacher_distribution, ensdist_fairseq.corpus.ding, ensdist_fairseq.checkpoints.swa\n"
        "print('fairseq' in sys.modules)\n"
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_non_editable_wheel_carries_the_package(tmp_path):
    """`pip install .` builds this wheel: every module, with the console scripts."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ROOT,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    for module in (
        "ensdist_fairseq/__init__.py",
        "ensdist_fairseq/tasks/translation_distill.py",
        "ensdist_fairseq/criterions/token_kd.py",
        "ensdist_fairseq/store/format.py",
        "ensdist_fairseq/cli/memoize.py",
    ):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(tmp_path / wheel).read(entry_points).decode()
    for script in ("ensdist-path", "ensdist-memoize", "ensdist-evaluate", "ensdist-report"):
        assert script in text

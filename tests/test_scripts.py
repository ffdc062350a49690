"""The bash recipes' shared rules (scripts/lib.sh): the numeric rule, command lines checked before
any work, the GPU arithmetic, setup without root, and the one train -> SWA skeleton (signals,
one trainer per directory, an update cap that ends mid-epoch)."""

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
LIB = os.path.join(ROOT, "scripts", "lib.sh")


def sh(*args, env=None, **kw):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=e, cwd=ROOT, **kw)


def lib(code, env=None):
    return sh("-c", f'set -euo pipefail; source "{LIB}"; {code}', env=env)


def one_error(r, *needles, rc=2):
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "value,lo,hi,ok",
    [
        ("5", 1, 10, True),
        ("10", 1, 10, True),
        ("007", 1, 10, True),
        ("-3", -5, 5, True),
        ("0", 1, 10, False),
        ("11", 1, 10, False),
        ("99999999999999999999", 1, 2**31 - 1, False),  # would wrap around in bash arithmetic
        ("2147483648", 0, 2**31 - 1, False),
        ("1.5", 0, 10, False),
        ("", 0, 10, False),
        ("1e3", 0, 10**4, False),
        ("abc", 0, 10, False),
    ],
)
def test_check_int_is_the_integer_rule(value, lo, hi, ok):
    r = lib(f'check_int --flag "{value}" {lo} {hi}; echo fine')
    # the same verdict as an independent reading: Python's int() and the interval
    try:
        expected = lo <= int(value, 10) <= hi and "." not in value
    except ValueError:
        expected = False
    assert ok == expected
    if ok:
        assert r.returncode == 0 and r.stdout.strip() == "fine", r.stderr
    else:
        one_error(r, "--flag", repr(value).replace('"', "'"))


@pytest.mark.parametrize(
    "value,ok",
    [
        ("1.5", True),
        ("1", True),
        ("2e0", True),
        (".5", False),
        ("0.99", False),
        ("nan", False),
        ("inf", False),
        ("1e999", False),
        ("1.5x", False),
        ("", False),
    ],
)
def test_check_real_is_finite_and_in_range(value, ok):
    r = lib(f'check_real --clean-ratio "{value}" 1 10; echo fine')
    if ok:
        assert r.returncode == 0 and r.stdout.strip() == "fine", r.stderr
    else:
        one_error(r, "--clean-ratio")


def test_prepare_raw_refuses_a_huge_vocabulary_naming_the_flag(tmp_path):
    r = sh(
        "scripts/prepare_raw.sh", "--src", "en", "--tgt", "de", "--raw", str(tmp_path),
        "--out", str(tmp_path / "out"), "--vocab-size", "99999999999999999999",
    )  # fmt: skip
    one_error(r, "--vocab-size", "99999999999999999999")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--out"], ["--out needs a value"]),
        (["--students", "mean-kd"], ["--students", "mean-kd"]),
        (["--members", "0"], ["--members"]),
        (["--jobs", "1.5"], ["--jobs"]),
        (["--topk", "99999999999999999999"], ["--topk"]),
        (["--bogus"], ["--bogus"]),
    ],
)
def test_demo_checks_its_command_line_before_any_work(tmp_path, args, needles):
    out = tmp_path / "demo"
    r = sh("scripts/demo.sh", *args, *(["--out", str(out)] if args != ["--out"] else []))
    one_error(r, *needles)
    assert "=== [demo]" not in r.stdout and not out.exists()  # no stage started


@pytest.mark.parametrize(
    "script", ["distill.sh", "train_ensemble.sh", "prepare_raw.sh", "prepare_wmt16.sh", "demo.sh"]
)
def test_help_is_the_whole_header(script):
    r = sh(f"scripts/{script}", "--help")
    assert r.returncode == 0, r.stderr
    header = []
    for line in open(os.path.join(ROOT, "scripts", script)).read().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line[2:] if line.startswith("# ") else line[1:])
    assert r.stdout.splitlines() == header and len(header) > 3


def test_distill_refuses_a_bad_topk_before_reading_anything():
    one_error(sh("scripts/distill.sh", "--topk", "0"), "--topk")


def test_config_numbers_follow_the_rule():
    r = lib(f'load_config "{ROOT}/configs/builtin_cpu.sh"', env={"MAX_EPOCH": "1e9"})
    one_error(r, "MAX_EPOCH", "1e9")


# ---- GPU arithmetic -------------------------------------------------------------------------


def fake_nvidia_smi(tmp_path, n):
    d = tmp_path / "fakebin"
    d.mkdir(exist_ok=True)
    f = d / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(n))
    f.write_text("#!/bin/sh\n" + lines)
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return str(d)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 8])
def test_gpu_count_reads_nvidia_smi_and_cuda_visible_devices(tmp_path, n):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = fake_nvidia_smi(tmp_path, n) + ":" + env["PATH"]
    r = subprocess.run(
        ["bash", "-c", f'source "{LIB}"; gpu_count'], capture_output=True, text=True, env=env
    )
    assert r.stdout.strip() == str(n), r.stderr
    # CUDA_VISIBLE_DEVICES, when set, is what CUDA shows the process
    for visible, count in (("0,2", 2), ("", 0), ("-1", 0), ("3", 1)):
        r = subprocess.run(
            ["bash", "-c", f'source "{LIB}"; gpu_count'],
            capture_output=True,
            text=True,
            env=dict(env, CUDA_VISIBLE_DEVICES=visible),
        )
        assert r.stdout.strip() == str(count)


@pytest.mark.parametrize("gpus", range(0, 10))
def test_wmt16_update_is_exactly_eight_gpu_batches_or_refused(tmp_path, gpus):
    env = {k: v for k, v in os.environ.items() if k not in ("GPUS", "UPDATE_FREQ")}
    env["PATH"] = fake_nvidia_smi(tmp_path, gpus) + ":" + env["PATH"]
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = (
        f'set -euo pipefail; source "{LIB}"; load_config "{ROOT}/configs/wmt16_en_de_base.sh"; '
        'printf "%s\\n" "${TRAIN_ARGS[@]}"'
    )
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    devices = max(gpus, 1)
    if 8 % devices == 0:
        args = r.stdout.split("\n")
        freq = int(args[args.index("--update-freq") + 1])
        assert r.returncode == 0 and freq * devices == 8, r.stderr
        world = args[args.index("--distributed-world-size") + 1] if gpus else None
        assert world == (str(gpus) if gpus else None)
    else:
        one_error(r, f"GPUS={gpus}", rc=1)
        valid = [
            d for d in (1, 2, 4, 8) if abs(d - gpus) == min(abs(e - gpus) for e in (1, 2, 4, 8))
        ]
        assert all(f"{d}" in r.stderr.split("(use ")[1] for d in valid)


# ---- setup without root ---------------------------------------------------------------------


def fake_root(tmp_path, uid):
    """A copy of setup_env.sh in a fake checkout whose .venv is up to date, with fake id,
    dpkg-query, apt-get and sudo that log their calls (nothing is installed)."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "scripts", "setup_env.sh"), root / "scripts")
    (root / "requirements").mkdir()
    (root / "requirements" / "constraints.txt").write_text("x==1\n")
    (root / "setup.py").write_text("# fake\n")
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\n")
    (venv / "python").chmod(0o755)
    want = hashlib.sha256(b"x==1\n# fake\n").hexdigest()[:16]
    (root / ".venv" / ".ensdist-installed").write_text(want + "\n")
    fb = tmp_path / "fakebin"
    fb.mkdir()
    log = tmp_path / "calls.log"
    tools = {"id": f"echo {uid}", "dpkg-query": "exit 1", "apt-get": "", "sudo": '"$@"'}
    for name, body in tools.items():
        f = fb / name
        f.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        f.chmod(0o755)
    return root, fb, log


@pytest.mark.parametrize("uid", [0, 1000])
def test_setup_installs_the_corpus_package_only_when_asked(tmp_path, uid):
    root, fb, log = fake_root(tmp_path, uid)
    env = dict(os.environ, PATH=f"{fb}:{os.environ['PATH']}")
    r = subprocess.run(
        ["bash", str(root / "scripts/setup_env.sh")], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr
    assert not log.exists() or "apt-get" not in log.read_text()  # no root needed, none asked
    r = subprocess.run(
        ["bash", str(root / "scripts/setup_env.sh"), "--corpus"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    calls = log.read_text()
    assert "apt-get install -y -qq trans-de-en=1.9-6" in calls
    assert ("sudo apt-get" in calls) == (uid != 0)


def test_setup_without_root_or_sudo_says_what_to_do(tmp_path):
    root, fb, log = fake_root(tmp_path, 1000)
    os.remove(fb / "sudo")
    path = ":".join(
        p for p in os.environ["PATH"].split(":") if not os.path.exists(os.path.join(p, "sudo"))
    )
    env = dict(os.environ, PATH=f"{fb}:{path}")
    r = subprocess.run(
        ["bash", str(root / "scripts/setup_env.sh"), "--corpus"],
        capture_output=True,
        text=True,
        env=env,
    )
    one_error(r, "needs root", "--data", rc=1)


# ---- the train -> SWA skeleton ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_store(tiny_checkpoints, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "store.h5"
    r = subprocess.run(
        [os.path.join(BIN, "ensdist-memoize"), tiny_data, "--path", ":".join(tiny_checkpoints),
         "--topk", "8", "--cpu", "--output", str(out)],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return str(out)


def tiny_config(tmp_path):
    import tiny_fairseq

    cfg = tmp_path / "tiny.sh"
    cfg.write_text(
        f"source {ROOT}/configs/builtin_cpu.sh\n"
        "ARCH_ARGS=(" + " ".join(tiny_fairseq.TINY_ARCH_ARGS) + ")\n"
        "TRAIN_ARGS=(--cpu --optimizer adam --lr 3e-3 --lr-scheduler inverse_sqrt "
        "--warmup-updates 10 --max-tokens 600 --num-workers 0)\n"
        "PATIENCE=2\nSWA_EPOCHS=2\n"
    )
    return str(cfg)


def distill(cfg, data, store, out, **env):
    args = ["scripts/distill.sh", "--config", cfg, "--data", data, "--store", store]
    return args + ["--variant", "mean_kd", "--out", str(out)], env


@pytest.mark.slow
def test_update_cap_inside_an_epoch_still_gives_the_swa_model(tiny_data, tiny_store, tmp_path):
    """300 pairs at 600 tokens a batch are 4 updates an epoch: a cap of 22 stops in epoch 6,
    whose mid-epoch validation is the best and has no epoch checkpoint."""
    from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint

    cfg = tiny_config(tmp_path)
    args, env = distill(cfg, tiny_data, tiny_store, tmp_path / "st")
    r = sh(*args, env={"STUDENT_MAX_UPDATE": "22", "STUDENT_MAX_EPOCH": "20"})
    assert r.returncode == 0, r.stdout + r.stderr
    d = tmp_path / "st" / "mean_kd"
    best = load_checkpoint(str(d / "checkpoint_best.pt"))["extra_state"]
    assert best["train_iterator"]["iterations_in_epoch"] > 0  # the case in question
    snaps = load_checkpoint(str(d / "checkpoint_swa.pt"))["extra_state"]["swa"]["snapshots"]
    assert snaps == ["checkpoint4.pt", "checkpoint5.pt"]  # ending at the best epoch end (5)
    assert (d / "done").exists() and "mid-epoch" in r.stdout


@pytest.mark.slow
def test_sigterm_stops_the_trainer_and_one_trainer_per_directory(tiny_data, tiny_store, tmp_path):
    cfg = tiny_config(tmp_path)
    args, _ = distill(cfg, tiny_data, tiny_store, tmp_path / "st")
    env = dict(
        os.environ, OMP_NUM_THREADS="1", STUDENT_MAX_UPDATE="100000", STUDENT_MAX_EPOCH="500"
    )
    log = tmp_path / "st" / "mean_kd" / "train.log"
    p = subprocess.Popen(
        ["bash", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            if log.exists() and "| valid on" in log.read_text():
                break
            time.sleep(0.1)
        # a second run in the same directory is refused while the first trains
        r = subprocess.run(
            ["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 1 and "another training is running" in r.stderr, r.stderr
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM
    # no trainer left behind: nothing holds the directory's lock any more
    probe = subprocess.run(["flock", "-n", str(log.parent / ".lock"), "true"])
    assert probe.returncode == 0
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(log.parent) not in ps

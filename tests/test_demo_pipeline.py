"""The main job end to end on a very small slice: every artefact, V' from --topk everywhere,
the stopping rule and the regime in the report, then a re-run that skips all."""

import json
import os
import subprocess

import pytest
import tiny_fairseq

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_on_a_small_slice_produces_everything_and_resumes(tmp_path):
    if not os.path.isfile("/usr/share/trans/de-en"):
        pytest.skip("the built-in corpus (Debian trans-de-en) is not installed")
    cfg = tmp_path / "tiny.sh"
    # The slice size comes from the config's MAX_PAIRS, as the shipped CPU config's does.
    # TOPK=8 in the config: --topk 32 must override it for the store, the students and the names.
    # STUDENT_MAX_UPDATE is only a cap here: the epochs bind, so SWA has its epoch checkpoints.
    cfg.write_text(
        f"source {ROOT}/configs/builtin_cpu.sh\n"
        "SPM_VOCAB_SIZE=400\n"
        "ARCH_ARGS=(" + " ".join(tiny_fairseq.TINY_ARCH_ARGS) + ")\n"
        "MAX_PAIRS=300\nMAX_EPOCH=3\nPATIENCE=1\nSWA_EPOCHS=2\nSTUDENT_MAX_UPDATE=1000\nTOPK=8\n"
        # teachers of 3 epochs on 240 pairs guess worse than the most frequent token
        "MEMOIZE_ARGS=(--allow-low-accuracy)\n"
        "GEN_ARGS=(--beam 1 --max-tokens 4000 --max-len-a 1.5 --max-len-b 5)\n"
    )
    out = tmp_path / "run"
    cmd = [
        "bash",
        "scripts/demo.sh",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--members",
        "2",
        "--topk",
        "32",
        "--students",
        "intra_mean_kd proxy_dirichlet mean_kd",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for mode in ("ce", "ls"):
        for k in (1, 2):
            member = out / "teachers" / mode / f"seed{k}"
            assert (member / "checkpoint_swa.pt").is_file()
            assert "ece1" in (member / "train.log").read_text()  # validation calibration is on
    assert (out / "store" / "ce_k2_v32.h5").is_file() and not (
        out / "store" / "ce_k2_v8.h5"
    ).exists()
    students = ("mean_kd", "proxy_dirichlet", "intra_mean_kd")
    for v in students:
        sdir = out / "students" / "ce_k2_v32" / v
        assert (sdir / "checkpoint_swa.pt").is_file()  # students follow the same rule: SWA
        log = (sdir / "train.log").read_text()
        assert "V'=32 of 32" in log, log[-2000:]  # trained on the 32 entries --topk asked for
    res = out / "results"
    names = {p.stem for p in res.glob("*.json")}
    assert names == {
        "ce-seed1",
        "ce-seed2",
        "ce-ensemble2",
        "ls-seed1",
        "ls-seed2",
        "ls-ensemble2",
        "ce-seed1-ts",  # the temperature-scaled rivals (T fitted on valid)
        "ce-ensemble2-ts",
        *(f"student-{v}-k2-v32" for v in students),
        "student-proxy_dirichlet-k2-v32-mean",
    }
    assert all(
        json.loads((res / f"{n}.json").read_text())["temperature"] > 0
        for n in ("ce-seed1-ts", "ce-ensemble2-ts")
    )
    # the uncertainty stage: OOD sets once, then the CE members, the CE ensemble and every student
    assert (out / "ood" / "ood_sets.json").is_file()
    unc = {p.parent.name for p in (res / "uncertainty").glob("*/system.json")}
    assert unc == {
        "ce-seed1",
        "ce-seed2",
        "ce-ensemble2",
        *(f"student-{v}-k2-v32" for v in students),
    }
    for name in names:
        r = json.loads((res / f"{name}.json").read_text())
        assert r["bleu"] is not None and 0 <= r["ece1"]["unweighted"] <= 1
    report = (res / "report.md").read_text()
    assert (
        "CE+SWA" in report and "LS+SWA" in report and "Do the papers' claims hold here?" in report
    )
    assert "## Training regime" in report and "| ce-seed1 |" in report
    assert "| student-intra_mean_kd-k2-v32 |" in report
    assert (res / "reliability_CE_SWA.png").is_file() and (res / "reliability_LS_SWA.png").is_file()

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout
    # teachers, store, students, evaluations, OOD sets, uncertainty
    assert log.count("skipping") >= 4 + 1 + 3 + 10 + 1 + 6
    assert "training seed" not in log and "[distill]" in log and "from " + str(out) not in log

    # Sequence-level KD students added to the finished run: teachers and the main store reused,
    # the train split translated by the CE ensemble, one more store on those translations.
    third = subprocess.run(
        cmd[:-1] + ["seqkd seqkd_mean_kd mean_kd"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert (
        "training seed" not in third.stdout and f"{out}/store/ce_k2_v32.h5 exists" in third.stdout
    )
    distilled = out / "seqkd" / "ce_k2"
    assert json.loads((distilled / "seqkd.json").read_text())["split"] == "train"
    for name in os.listdir(out / "data" / "bin"):  # validation and test stay on the references
        if not name.startswith("train."):
            assert (distilled / name).read_bytes() == (out / "data" / "bin" / name).read_bytes()
    assert (out / "store" / "seqkd_ce_k2_v32.h5").is_file()
    seq = {"seqkd": out / "students" / "ce_k2", "seqkd_mean_kd": out / "students" / "ce_k2_v32"}
    for v, sdir in seq.items():
        assert (sdir / v / "checkpoint_swa.pt").is_file()
        log = (sdir / v / "train.log").read_text()
        assert str(distilled) in log and ("V'=32 of 32" in log) == (v == "seqkd_mean_kd")
    report = (res / "report.md").read_text()
    for name in ("student-seqkd-k2", "student-seqkd_mean_kd-k2-v32"):
        r = json.loads((res / f"{name}.json").read_text())
        assert r["kind"] == "student" and r["num_teachers"] == 2 and r["bleu"] is not None
        assert (res / "uncertainty" / name / "system.json").is_file()
        assert f"Distilled ({name})" in report and f"| {name} |" in report


def test_demo_picks_the_gpu_config_when_cuda_is_visible():
    def chosen(cuda, *extra):
        r = subprocess.run(
            ["bash", "scripts/demo.sh", "--print-config", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=dict(os.environ, ENSDIST_CUDA=cuda),
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return [x for x in r.stdout.splitlines() if x.startswith("[demo] config:")][-1]

    assert chosen("1").endswith("configs/builtin_gpu.sh")
    assert chosen("0").endswith("configs/builtin_cpu.sh")
    assert chosen("1", "--config", "configs/builtin_cpu.sh").endswith("configs/builtin_cpu.sh")


def test_demo_accepts_the_sequence_level_students_and_names_the_choices():
    def demo(*args):
        return subprocess.run(
            ["bash", "scripts/demo.sh", *args, "--print-config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=dict(os.environ, ENSDIST_CUDA="0"),
        )

    ok = demo("--students", "seqkd seqkd_mean_kd mean_kd")
    assert ok.returncode == 0 and "[demo] config:" in ok.stdout, ok.stderr[-2000:]
    bad = demo("--students", "seqkd seq_kd")
    assert bad.returncode == 2 and "=== [demo]" not in bad.stdout
    assert "unknown student 'seq_kd'" in bad.stderr and "seqkd_mean_kd" in bad.stderr

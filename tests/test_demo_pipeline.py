"""The main job end to end on a very small slice: every artefact, then a re-run that skips all."""
import json
import os
import subprocess

import tiny_fairseq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_on_a_small_slice_produces_everything_and_resumes(tmp_path):
    if not os.path.isfile("/usr/share/trans/de-en"):
        import pytest
        pytest.skip("the built-in corpus (Debian trans-de-en) is not installed")
    cfg = tmp_path / "tiny.sh"
    cfg.write_text(
        f"source {ROOT}/configs/builtin_cpu.sh\n"
        "SPM_VOCAB_SIZE=400\n"
        "ARCH_ARGS=(" + " ".join(tiny_fairseq.TINY_ARCH_ARGS) + ")\n"
        "MAX_EPOCH=2\nSWA_EPOCHS=1\nSTUDENT_MAX_UPDATE=6\nTOPK=8\n"
        "GEN_ARGS=(--beam 1 --max-tokens 4000 --max-len-a 1.5 --max-len-b 5)\n"
    )
    out = tmp_path / "run"
    cmd = ["bash", "scripts/demo.sh", "--config", str(cfg), "--out", str(out), "--members", "2",
           "--max-pairs", "300"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for mode in ("ce", "ls"):
        for k in (1, 2):
            assert (out / "teachers" / mode / f"seed{k}" / "checkpoint_swa.pt").is_file()
    assert (out / "store" / "ce_k2_v8.h5").is_file()
    students = ("mean_kd", "proxy_dirichlet", "intra_mean_kd")
    for v in students:
        assert (out / "students" / "ce_k2_v8" / v / "checkpoint_last.pt").is_file()
    res = out / "results"
    names = {p.stem for p in res.glob("*.json")}
    assert names == {"ce-seed1", "ce-seed2", "ce-ensemble2", "ls-seed1", "ls-seed2", "ls-ensemble2",
                     *(f"student-{v}-k2-v8" for v in students)}
    for name in names:
        r = json.loads((res / f"{name}.json").read_text())
        assert r["bleu"] is not None and 0 <= r["ece1"]["unweighted"] <= 1
    report = (res / "report.md").read_text()
    assert "CE+SWA" in report and "LS+SWA" in report and "Does the paper's pattern hold" in report
    assert (res / "reliability_ce_swa.png").is_file() or list(res.glob("reliability_*.png"))

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout
    assert log.count("skipping") >= 4 + 1 + 3 + 9  # teachers, store, students, evaluations
    assert "training seed" not in log and "[distill]" in log and "updates from" not in log

"""Every config, sourced as the scripts source it: the arguments it produces are the papers'
(a typo or a dropped flag shows here), and fairseq-train's own parser accepts them."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("builtin_cpu", "builtin_gpu", "wmt16_en_de_base", "iwslt14_de_en_small")
ARRAYS = ("ARCH_ARGS", "TRAIN_ARGS", "EVAL_ARGS", "GEN_ARGS", "DEVICE_ARGS", "STUDENT_ARGS")
SCALARS = (
    "SRC",
    "TGT",
    "LS_EPSILON",
    "MAX_EPOCH",
    "PATIENCE",
    "SWA_EPOCHS",
    "STUDENT_SWA_EPOCHS",
    "STUDENT_MAX_UPDATE",
    "TOPK",
    "TEACHER_TASK",
    "JOBS",
    "DEMO_STUDENTS",
)


def load(name, **env):
    """The config's arrays and scalars after scripts/lib.sh's load_config."""
    script = (
        f'source "{ROOT}/scripts/lib.sh"; load_config "{ROOT}/configs/{name}.sh"; '
        + "".join(f'printf "%s\\0" "@{a}" "${{{a}[@]}}"; ' for a in ARRAYS)
        + "".join(f'printf "%s\\0" "={s}" "${{{s}:-}}"; ' for s in SCALARS)
    )
    drop = SCALARS + ("GPUS", "UPDATE_FREQ", "CUDA_VISIBLE_DEVICES")
    clean = {k: v for k, v in os.environ.items() if k not in drop}
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, env=dict(clean, **env)
    ).stdout
    cfg, cur = {}, None
    for item in out.split("\0")[:-1]:
        if item[:1] == "@" and item[1:] in ARRAYS:
            cur = cfg.setdefault(item[1:], [])
        elif item[:1] == "=" and item[1:] in SCALARS:
            cur = item[1:]
        elif isinstance(cur, str):
            cfg[cur], cur = item, None
        else:
            cur.append(item)
    return cfg


def value(args, flag):
    assert args.count(flag) == 1, f"{flag} appears {args.count(flag)} times in {args}"
    return args[args.index(flag) + 1]


def test_wmt16_is_reich_et_al():
    c = load("wmt16_en_de_base")
    assert value(c["ARCH_ARGS"], "--arch") == "transformer_wmt_en_de"
    assert "--share-all-embeddings" in c["ARCH_ARGS"]
    t = c["TRAIN_ARGS"]
    assert (
        "--fp16" in t
        and value(t, "--optimizer") == "adam"
        and value(t, "--adam-betas") == "(0.9,0.98)"
    )
    assert value(t, "--lr") == "7e-4" and value(t, "--lr-scheduler") == "inverse_sqrt"
    assert value(t, "--warmup-updates") == "4000" and value(t, "--max-tokens") == "4096"
    # 4 GPUs x 4096 tokens x 2 accumulation steps; the same effective batch on 1 or 8 GPUs
    four = load("wmt16_en_de_base", GPUS="4")["TRAIN_ARGS"]
    assert value(four, "--update-freq") == "2" and value(four, "--distributed-world-size") == "4"
    assert value(load("wmt16_en_de_base", GPUS="1")["TRAIN_ARGS"], "--update-freq") == "8"
    assert value(load("wmt16_en_de_base", GPUS="8")["TRAIN_ARGS"], "--update-freq") == "1"
    assert c["LS_EPSILON"] == "0.1" and c["TOPK"] == "64"
    # every model uses SWA, students included (STUDENT_SWA_EPOCHS unset: the teachers' 10)
    assert c["SWA_EPOCHS"] == "10" and c["STUDENT_SWA_EPOCHS"] == ""
    assert int(c["PATIENCE"]) > 0
    g = c["GEN_ARGS"]
    assert value(g, "--beam") == "4" and value(g, "--lenpen") == "0.6"
    assert c["EVAL_ARGS"] == ["--eval-calibration"] and c["TEACHER_TASK"] == "translation_distill"
    # the joint 32K vocabulary is BPE, as in the paper
    prep = open(os.path.join(ROOT, "scripts/prepare_wmt16.sh")).read()
    assert "--model-type bpe" in prep and "VOCAB_SIZE=32000" in prep


def test_iwslt14_is_xu_et_al_as_reproduced():
    c = load("iwslt14_de_en_small")
    assert (c["SRC"], c["TGT"]) == ("de", "en")
    a = c["ARCH_ARGS"]
    assert value(a, "--arch") == "transformer_iwslt_de_en"
    assert not [x for x in a if x.startswith("--share")]  # 49.98M parameters: nothing shared
    t = c["TRAIN_ARGS"]
    assert value(t, "--lr") == "5e-4" and value(t, "--warmup-updates") == "8000"
    assert value(t, "--adam-eps") == "1e-6" and value(t, "--adam-betas") == "(0.9,0.98)"
    assert value(t, "--dropout") == "0.3" and value(t, "--attention-dropout") == "0.1"
    assert value(t, "--weight-decay") == "0.0001" and value(t, "--max-tokens") == "4096"
    assert c["STUDENT_MAX_UPDATE"] == "50000" and c["STUDENT_SWA_EPOCHS"] == "0"
    assert value(c["GEN_ARGS"], "--beam") == "5"
    recipe = open(os.path.join(ROOT, "scripts/recipe_iwslt14_intra.sh")).read()
    assert 'checkpoint_best.pt" --name' in recipe and '--reference "$REFERENCE"' in recipe
    assert "raw/test.$TGT" in recipe


def test_builtin_configs_stop_by_the_rule():
    for name in ("builtin_cpu", "builtin_gpu"):
        c = load(name)
        assert int(c["PATIENCE"]) >= 1 and int(c["SWA_EPOCHS"]) >= 1, name
        assert int(c["MAX_EPOCH"]) > int(c["PATIENCE"]) + int(c["SWA_EPOCHS"]), name
    assert "--cpu" in load("builtin_cpu")["TRAIN_ARGS"]
    g = load("builtin_gpu")
    assert "--fp16" in g["TRAIN_ARGS"] and "--cpu" not in g["TRAIN_ARGS"] and int(g["JOBS"]) > 1
    assert g["DEVICE_ARGS"] == [] and g["DEMO_STUDENTS"].split()[0] == "intra_mean_kd"
    assert set(load("builtin_cpu")["DEMO_STUDENTS"].split()) <= {
        "intra_mean_kd",
        "proxy_dirichlet",
        "mean_kd",
    }


@pytest.mark.parametrize("name", CONFIGS)
def test_fairseq_train_accepts_the_arguments(name):
    from fairseq import options

    c = load(name)
    for eps in ("0", c["LS_EPSILON"]):
        argv = [
            "/nonexistent-data",
            "--task",
            "translation",
            *c["ARCH_ARGS"],
            *c["TRAIN_ARGS"],
            "--criterion",
            "label_smoothed_cross_entropy",
            "--label-smoothing",
            eps,
            "--max-epoch",
            c["MAX_EPOCH"],
            "--patience",
            c["PATIENCE"],
        ]
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, argv)  # SystemExit on an unknown flag
        assert args.arch == value(c["ARCH_ARGS"], "--arch")


@pytest.mark.slow
def test_prepare_raw_trains_bpe_when_asked(tmp_path):
    """prepare_raw.sh --model-type bpe (the WMT16 recipe) gives a BPE SentencePiece model;
    the choice is part of the marker, so a unigram directory is not silently reused."""
    import tiny_fairseq

    raw = tmp_path / "raw"
    tiny_fairseq.write_synthetic_raw(str(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            "bash",
            "scripts/prepare_raw.sh",
            "--src",
            "de",
            "--tgt",
            "en",
            "--raw",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--vocab-size",
            "40",
            "--model-type",
            "bpe",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # BPE's vocabulary scores are the merge ranks (0, -1, -2, ...); unigram's are log-probabilities
    vocab = (tmp_path / "out" / "spm" / "spm.vocab").read_text().splitlines()
    scores = [float(line.split("\t")[1]) for line in vocab]
    pieces = [s for s in scores if s != 0]
    assert pieces and all(s == int(s) for s in scores), scores[:10]
    assert "model_type=bpe" in (tmp_path / "out" / "bin" / ".prepared").read_text()
    r = subprocess.run(
        [
            "bash",
            "scripts/prepare_raw.sh",
            "--src",
            "de",
            "--tgt",
            "en",
            "--raw",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--vocab-size",
            "40",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode != 0 and "other inputs or settings" in r.stderr

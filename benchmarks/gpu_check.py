"""The device check (run by benchmarks/gpu_check.sh), printing one markdown table.

1. students: every --kd-loss x --intra-passes variant for --updates updates in float32, --fp16
   and --bf16 (optionally --amp) on a synthetic corpus with K = 3 teachers memoized on CUDA; the
   loss of the last --log-interval updates per precision against float32 (|diff| <= TOL_LOSS
   relative), no "Minimum loss scale reached", finite losses;
2. memoize on CUDA against the CPU store of the same teachers: top-V' index sets identical on
   >= 99.9 % of tokens, probabilities within one float16 rounding step, beta0_hat within 1e-3;
3. memoize throughput against the raw teacher-forced ensemble forward (>= 0.9x);
4. benchmarks/bench_criterion.py --device cuda: step-time ratios to label-smoothed CE
   (mean_kd <= 1.05x, proxy_dirichlet <= 1.15x, intra K=3 stacked <= 3.3x).

--dry-run: tiny sizes on the CPU (float32 and bf16 only, both stores on the CPU), to test the
code paths on a machine without a GPU; its numbers mean nothing.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
TOL_LOSS = 0.05  # final training loss of fp16/bf16/amp within 5 % of float32 (relative)
VARIANTS = {  # name: criterion arguments (and the Dirichlet student for proxy_dirichlet)
    "kd_none_intra3": ["--kd-loss", "none", "--intra-passes", "3"],
    "mean_kd": ["--kd-loss", "mean_kd"],
    "mean_kd_intra3": ["--kd-loss", "mean_kd", "--intra-passes", "3"],
    "proxy_dirichlet": ["--kd-loss", "proxy_dirichlet"],
    "proxy_dirichlet_intra3": ["--kd-loss", "proxy_dirichlet", "--intra-passes", "3"],
    "label_smoothed_ce": ["--kd-loss", "none"],
}


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", default="/tmp/ensdist_gpu_check")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU (tests the code paths)"
    )
    p.add_argument(
        "--precisions",
        default=None,
        help="comma-separated of fp32,fp16,bf16,amp (default: fp32,fp16,bf16)",
    )
    p.add_argument(
        "--updates", type=int, default=None, help="student updates (default 400; dry run 6)"
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="concurrent trainings (default 6; dry run 1)"
    )
    p.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="training sentences (default 40000; dry run 300)",
    )
    return p.parse_args()


class Sizes:
    def __init__(self, dry):
        self.dry = dry
        self.sentences, self.vocab = (300, 40) if dry else (40000, 1000)
        dim = 32 if dry else 256
        layers = "1" if dry else "3"
        self.arch = [
            "--encoder-layers",
            layers,
            "--decoder-layers",
            layers,
            "--encoder-embed-dim",
            str(dim),
            "--decoder-embed-dim",
            str(dim),
            "--encoder-ffn-embed-dim",
            str(4 * dim),
            "--decoder-ffn-embed-dim",
            str(4 * dim),
            "--encoder-attention-heads",
            "4",
            "--decoder-attention-heads",
            "4",
            "--share-all-embeddings",
            "--encoder-normalize-before",
            "--decoder-normalize-before",
        ]
        self.teacher_updates, self.student_updates = (8, 6) if dry else (600, 400)
        self.log_interval = 2 if dry else 100
        self.max_tokens = 400 if dry else 4096
        self.topk = 8 if dry else 64
        self.jobs = 1 if dry else 6
        self.precisions = ["fp32", "bf16"] if dry else ["fp32", "fp16", "bf16"]
        self.bench = (
            [
                "--vocab",
                "500",
                "--sentences",
                "4",
                "--length",
                "6",
                "--embed-dim",
                "32",
                "--layers",
                "1",
                "--rounds",
                "2",
            ]
            if dry
            else [
                "--vocab",
                "32000",
                "--sentences",
                "128",
                "--length",
                "32",
                "--embed-dim",
                "512",
                "--layers",
                "6",
                "--rounds",
                "12",
            ]
        )


def python_cmd(module_or_script, *args):
    target = (
        ["-m", module_or_script] if not module_or_script.endswith(".py") else [module_or_script]
    )
    return [sys.executable, *target, *map(str, args)]


def run(cmd, log=None):
    """Run to completion; the output goes to `log` (or is returned). Raises with the tail on failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = p.stdout + p.stderr
    if log:
        with open(log, "w") as f:
            f.write(out)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({p.returncode}):\n{out[-3000:]}")
    return out


def run_parallel(jobs, width):
    """jobs: {name: (cmd, log)}; at most `width` at once. Returns {name: error text or None}."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    pending, running, errors = list(jobs.items()), {}, {}
    while pending or running:
        while pending and len(running) < width:
            name, (cmd, log) = pending.pop(0)
            running[name] = (
                subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env),
                log,
            )
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                errors[name] = None if proc.returncode == 0 else open(log).read()[-2000:]
        time.sleep(0.5)
    return errors


def prepare_data(work, sizes):
    import tiny_fairseq

    data = os.path.join(work, "bin")
    if not os.path.isdir(data):
        tiny_fairseq.write_synthetic_raw(
            os.path.join(work, "raw"),
            n_train=sizes.sentences,
            n_valid=200,
            n_test=200,
            vocab=sizes.vocab,
        )
        run(
            python_cmd(
                "fairseq_cli.preprocess",
                "--source-lang",
                "en",
                "--target-lang",
                "de",
                "--trainpref",
                f"{work}/raw/train",
                "--validpref",
                f"{work}/raw/valid",
                "--testpref",
                f"{work}/raw/test",
                "--destdir",
                data,
                "--joined-dictionary",
                "--workers",
                "8",
            )
        )
    return data


def train_args(data, sizes, save, updates, precision, extra):
    device = ["--cpu"] if sizes.dry else []
    precision_args = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"], "amp": ["--amp"]}[
        precision
    ]
    script = "ensdist_fairseq.cli.train" if precision == "bf16" else "fairseq_cli.train"
    return python_cmd(
        script,
        data,
        "--user-dir",
        os.path.join(ROOT, "ensdist_fairseq"),
        "--task",
        "translation_distill",
        *sizes.arch,
        "--optimizer",
        "adam",
        "--adam-betas",
        "(0.9,0.98)",
        "--lr",
        "1e-3",
        "--lr-scheduler",
        "inverse_sqrt",
        "--warmup-updates",
        str(max(1, updates // 4)),
        "--dropout",
        "0.1",
        "--max-tokens",
        sizes.max_tokens,
        "--max-update",
        updates,
        "--log-format",
        "json",
        "--log-interval",
        sizes.log_interval,
        "--save-dir",
        save,
        "--no-epoch-checkpoints",
        "--disable-validation",
        "--seed",
        "1",
        *precision_args,
        *device,
        *extra,
    )


def teachers(work, data, sizes):
    jobs = {}
    for seed in (1, 2, 3):
        save = os.path.join(work, f"teacher{seed}")
        if not os.path.exists(os.path.join(save, "checkpoint_last.pt")):
            cmd = train_args(
                data,
                sizes,
                save,
                sizes.teacher_updates,
                "fp32" if sizes.dry else "fp16",
                ["--arch", "transformer", "--criterion", "label_smoothed_cross_entropy"],
            )
            cmd[cmd.index("--seed") + 1] = str(seed)
            jobs[f"teacher{seed}"] = (cmd, save + ".log")
    errors = {k: v for k, v in run_parallel(jobs, 3).items() if v}
    if errors:
        raise RuntimeError(f"teacher training failed: {errors}")
    return [os.path.join(work, f"teacher{s}", "checkpoint_last.pt") for s in (1, 2, 3)]


def memoize(work, data, ckpts, sizes, on_cpu):
    out = os.path.join(work, "store_cpu.h5" if on_cpu else "store_gpu.h5")
    if os.path.exists(out):
        os.remove(out)
    start = time.perf_counter()
    run(
        python_cmd(
            "ensdist_fairseq.cli.memoize",
            data,
            "--path",
            ":".join(ckpts),
            "--output",
            out,
            "--topk",
            sizes.topk,
            "--max-tokens",
            8192,
            *(["--cpu"] if on_cpu else []),
        )
    )
    return out, time.perf_counter() - start


def raw_forward_seconds(data, ckpts, on_cpu):
    """Load + the teacher-forced ensemble forward over the training split (what memoize adds to)."""
    code = f"""
import time, torch
from ensdist_fairseq.teachers import teacher_forcing as tf
start = time.perf_counter()
device = torch.device('cpu' if {on_cpu} else 'cuda')
models, task = tf.load_models({ckpts!r}, {data!r}, device)
task.load_dataset('train')
ds = task.dataset('train')
with torch.inference_mode():
    for s in tf.samples(ds, tf.plan_batches(ds, max_tokens=8192), device):
        lp = tf.ensemble_log_probs(models, s['net_input'])
if device.type == 'cuda':
    torch.cuda.synchronize()
print('SECONDS', time.perf_counter() - start)
"""
    out = run([sys.executable, "-c", code])
    return float(re.findall(r"SECONDS ([0-9.e+-]+)", out)[-1])


def compare_stores(a, b):
    """(share of tokens with identical top-V' index sets, max prob difference in float16 steps,
    max relative beta0_hat difference)."""
    from ensdist_fairseq.store.format import StoreReader

    ra, rb = StoreReader(a), StoreReader(b)
    same, total, worst_steps, worst_prec = 0, 0, 0.0, 0.0
    for i in range(ra.num_sentences):
        ia, pa, ba = ra.read(i)
        ib, pb, bb = rb.read(i)
        for t in range(len(ia)):
            total += 1
            if set(ia[t].tolist()) == set(ib[t].tolist()):
                same += 1
                oa, ob = np.argsort(ia[t]), np.argsort(ib[t])
                step = np.maximum(
                    np.spacing(np.abs(pa[t][oa]).astype(np.float16)).astype(np.float64), 2.0**-24
                )
                worst_steps = max(worst_steps, float(np.max(np.abs(pa[t][oa] - pb[t][ob]) / step)))
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(ba.astype(np.float64) - bb) / np.maximum(
                np.abs(ba.astype(np.float64)), 1e-30
            )
        worst_prec = max(worst_prec, float(np.nanmax(rel)) if len(rel) else 0.0)
    return same / max(total, 1), worst_steps, worst_prec


def students(work, data, store, sizes, precisions, width):
    jobs = {}
    for name, crit in VARIANTS.items():
        arch = "dirichlet_transformer" if "proxy" in name else "transformer"
        for precision in precisions:
            save = os.path.join(work, f"student_{name}_{precision}")
            extra = [
                "--arch",
                arch,
                "--criterion",
                "token_kd",
                *crit,
                "--teacher-store",
                store,
                "--no-save",
            ]
            jobs[(name, precision)] = (
                train_args(data, sizes, save, sizes.student_updates, precision, extra),
                save + ".log",
            )
    errors = run_parallel(jobs, width)
    results = {}
    for (name, precision), (_, log) in jobs.items():
        text = open(log).read()
        inner = [
            json.loads(line[line.index('{"') :])
            for line in text.splitlines()
            if '{"' in line and "train_inner" in line[: line.index('{"')]
        ]
        losses = [float(r["objective"]) for r in inner]  # what is optimized
        results[(name, precision)] = dict(
            error=errors[(name, precision)],
            loss=losses[-1] if losses else float("nan"),
            finite=bool(losses) and all(np.isfinite(losses)),
            overflows=text.count("gradient overflow detected"),
            min_scale="Minimum loss scale reached" in text,
        )
    return results


def bench_criterion(sizes):
    device = [] if sizes.dry else ["--device", "cuda"]
    out = run(python_cmd(os.path.join(HERE, "bench_criterion.py"), *sizes.bench, *device))
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.match(r"^[0-9.]+$", cells[2]):
            rows[cells[0]] = float(cells[2])
    return rows, out.splitlines()[0]


def main():
    args = parse_args()
    sizes = Sizes(args.dry_run)
    sizes.student_updates = args.updates or sizes.student_updates
    sizes.sentences = args.sentences or sizes.sentences
    precisions = args.precisions.split(",") if args.precisions else sizes.precisions
    width = args.jobs or sizes.jobs
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    rows = []  # (check, measured, target, ok)
    data = prepare_data(args.workdir, sizes)
    ckpts = teachers(args.workdir, data, sizes)
    gpu_store, t_memo = memoize(args.workdir, data, ckpts, sizes, on_cpu=sizes.dry)
    cpu_store, _ = memoize(args.workdir, data, ckpts, sizes, on_cpu=True)
    same, steps, prec = compare_stores(gpu_store, cpu_store)
    rows += [
        (
            "memoize CUDA vs CPU: tokens with identical top-V' index sets",
            f"{100 * same:.3f} %",
            ">= 99.9 %",
            same >= 0.999,
        ),
        (
            "memoize CUDA vs CPU: max probability difference",
            f"{steps:.2f} float16 steps",
            "<= 1 step",
            steps <= 1,
        ),
        (
            "memoize CUDA vs CPU: max beta0_hat relative difference",
            f"{prec:.2e}",
            "<= 1e-3",
            prec <= 1e-3,
        ),
    ]
    t_raw = raw_forward_seconds(data, ckpts, on_cpu=sizes.dry)
    rows.append(
        (
            "memoize throughput / raw teacher-forced ensemble forward",
            f"{t_raw / t_memo:.3f}x",
            ">= 0.9x",
            t_raw / t_memo >= 0.9,
        )
    )
    results = students(args.workdir, data, gpu_store, sizes, precisions, width)
    for name in VARIANTS:
        base = results[(name, "fp32")]
        for precision in precisions:
            r = results[(name, precision)]
            ok = r["error"] is None and r["finite"] and not r["min_scale"]
            rel = abs(r["loss"] - base["loss"]) / base["loss"] if base["loss"] > 0 else float("nan")
            if precision != "fp32":
                ok = ok and rel <= TOL_LOSS
            note = f", {r['overflows']} overflow-skipped updates" if r["overflows"] else ""
            rows.append(
                (
                    f"student {name} {precision}: final train loss (bits, last {sizes.log_interval} updates)",
                    (
                        f"{r['loss']:.3f} ({100 * rel:+.1f} % vs fp32{note})"
                        if precision != "fp32"
                        else f"{r['loss']:.3f}"
                    ),
                    "finite" if precision == "fp32" else f"within {100 * TOL_LOSS:.0f} % of fp32",
                    ok,
                )
            )
    ratios, header = bench_criterion(sizes)
    for variant, target in (
        ("token_kd mean_kd", 1.05),
        ("token_kd proxy_dirichlet", 1.15),
        ("token_kd intra K=3 stacked", 3.3),
    ):
        r = ratios.get(variant, float("nan"))
        rows.append(
            (
                f"criterion step time {variant} / label-smoothed CE",
                f"{r:.3f}x",
                f"<= {target}x",
                r <= target,
            )
        )
    device = "CPU dry run (numbers mean nothing)" if sizes.dry else _gpu_name()
    print(
        f"\n## gpu_check on {device}: {sizes.sentences} sentences, {sizes.student_updates} student updates, "
        f"{time.perf_counter() - t0:.0f} s\n\nbench_criterion: {header}\n"
    )
    print("| check | measured | target | ok |\n|---|---|---|---|")
    for check, measured, target, ok in rows:
        print(f"| {check} | {measured} | {target} | {'yes' if ok else '**NO**'} |")
    failed = [r for r in rows if not r[3]]
    sys.exit(1 if failed and not sizes.dry else 0)


def _gpu_name():
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()

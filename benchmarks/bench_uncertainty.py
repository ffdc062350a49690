"""Benchmark: `ensdist-uncertainty` against `fairseq-generate` of the same system on the same input.

For each system given (--system NAME=PATHS, an ensemble as a.pt:b.pt), whole commands, same
split, same beam and length limits, CPU, one thread:
    fairseq-generate DATA --path PATHS --gen-subset SPLIT --beam B --quiet
    ensdist-uncertainty DATA --path PATHS --split SPLIT --beam B   (B hypotheses per sentence,
        all measures computed inside the search, chrF, JSON lines)
Targets: uncertainty <= 1.1 x generate for a single model, <= 1.3 x for a Dirichlet student and
for an ensemble of K (against fairseq-generate of that ensemble). Repetitions are interleaved; the medians are reported.
With --ood-dir the uncertainty command also runs on the OOD sets once, to show its peak RSS
stays flat when the input grows (memory does not depend on the number of sentences).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_uncertainty.py DATA \
        --system single=m1.pt --system ensemble=m1.pt:m2.pt --system pd=pd.pt \
        [--ood-dir OOD] [--repeats 3] [--beam 5] [--max-len-a 1.5 --max-len-b 10]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

BIN = os.path.dirname(sys.executable)
PLUGIN_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ensdist_fairseq"
)
# A fresh parent per command, so RUSAGE_CHILDREN is that command's own peak RSS.
WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
    "sys.stderr.write(rc.stderr.decode()[-2000:] if rc.returncode else ''); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(rc.returncode, time.perf_counter() - t, u.ru_utime + u.ru_stime, u.ru_maxrss)"
)


def measure(cmd):
    """(CPU seconds, peak RSS MiB) of one whole command. CPU time (user + system, one thread)
    rather than wall time: on a shared machine the wall time says more about the neighbours."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    p = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env
    )
    rc, _wall, cpu, rss = p.stdout.split()
    if rc != "0":
        sys.exit(f"error: {' '.join(cmd[:2])} failed:\n{p.stderr}")
    return float(cpu), int(rss) / 1024


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data")
    ap.add_argument("--system", action="append", required=True, metavar="NAME=PATHS")
    ap.add_argument("--split", default="test")
    ap.add_argument("--ood-dir")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--max-len-a", default="1.5")
    ap.add_argument("--max-len-b", default="10")
    ap.add_argument("--max-tokens", default="8000")
    args = ap.parse_args()
    limits = [
        "--beam",
        str(args.beam),
        "--max-len-a",
        args.max_len_a,
        "--max-len-b",
        args.max_len_b,
        "--max-tokens",
        args.max_tokens,
        "--cpu",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for item in args.system:
            name, paths = item.split("=", 1)
            generate = [
                os.path.join(BIN, "fairseq-generate"),
                args.data,
                "--user-dir",
                PLUGIN_DIR,
                "--path",
                paths,
                "--gen-subset",
                args.split,
                "--quiet",
                *limits,
            ]
            uncertainty = [
                os.path.join(BIN, "ensdist-uncertainty"),
                args.data,
                "--path",
                paths,
                "--name",
                name,
                "--split",
                args.split,
                "--out",
                os.path.join(work, name),
                *limits,
            ]
            g, u = [], []
            for _ in range(args.repeats):  # interleaved: load on the shared machine hits both
                g.append(measure(generate))
                u.append(measure(uncertainty))
            gs, us = statistics.median(t for t, _ in g), statistics.median(t for t, _ in u)
            row = {
                "name": name,
                "K": len(paths.split(":")),
                "generate": gs,
                "uncertainty": us,
                "ratio": us / gs,
                "rss_generate": max(r for _, r in g),
                "rss": max(r for _, r in u),
            }
            if args.ood_dir:
                row["ood_seconds"], row["rss_ood"] = measure(
                    uncertainty + ["--ood-dir", args.ood_dir]
                )
            rows.append(row)
            print(f"[bench] {row}", file=sys.stderr, flush=True)
    print(
        f"| system | K | fairseq-generate (CPU s) | ensdist-uncertainty (CPU s) | ratio (targets 1.1 / 1.3) "
        f"| peak RSS generate / uncertainty (MiB){' | + OOD sets: CPU s, peak RSS' if args.ood_dir else ''} |"
    )
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if args.ood_dir else ""))
    for r in rows:
        extra = f" | {r['ood_seconds']:.1f} s, {r['rss_ood']:.0f} MiB" if args.ood_dir else ""
        print(
            f"| {r['name']} | {r['K']} | {r['generate']:.2f} | {r['uncertainty']:.2f} | "
            f"**{r['ratio']:.2f}** | {r['rss_generate']:.0f} / {r['rss']:.0f}{extra} |"
        )


if __name__ == "__main__":
    main()

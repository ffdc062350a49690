"""Stage wall times of a `bash scripts/demo.sh` run and the teachers' fairseq training speed.

    bash scripts/demo.sh --out runs/bench > runs/bench.log 2>&1
    .venv/bin/python benchmarks/demo_stages.py runs/bench.log runs/bench

Reads the "=== [demo] <stage> (<N>s elapsed)" lines the demo prints and the last
"| train |" line of every train.log under the run (fairseq's words/s), prints markdown.
"""

import glob
import os
import re
import sys

STAGE = re.compile(r"^=== \[demo\] (\w+)[: ].*\((\d+)s elapsed\)")
WPS = re.compile(r"\| train \| .*\| wps ([\d.]+) .*\| train_wall (\d+) ")


def stage_times(log_text):
    marks = [(m.group(1), int(m.group(2))) for m in map(STAGE.match, log_text.splitlines()) if m]
    return [(name, nxt[1] - start) for (name, start), nxt in zip(marks, marks[1:])]


def main(log_path, run_dir):
    with open(log_path, encoding="utf-8") as f:
        times = stage_times(f.read())
    total = sum(t for _, t in times)
    print("| stage | wall time (s) | share |\n|---|---:|---:|")
    for name, t in times:
        print(f"| {name} | {t} | {t / max(total, 1):.0%} |")
    print(f"| **total** | **{total}** | |\n")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ensdist_fairseq.report.train_logs import read_train_log

    print(
        "| run | words/s (last epoch) | train_wall per epoch (s) | epochs | best epoch | stop |\n"
        "|---|---:|---:|---:|---:|---|"
    )
    for log in sorted(glob.glob(os.path.join(run_dir, "**", "train.log"), recursive=True)):
        lines = [m for m in map(WPS.search, open(log, encoding="utf-8")) if m]
        run = read_train_log(log)
        if lines:
            print(
                f"| {os.path.relpath(os.path.dirname(log), run_dir)} | {float(lines[-1].group(1)):.0f} "
                f"| {lines[-1].group(2)} | {run.last_epoch} | {run.best_epoch} "
                f"| {'early stop' if run.stopped_early else 'cap'} |"
            )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: demo_stages.py DEMO_LOG RUN_DIR")
    main(*sys.argv[1:])

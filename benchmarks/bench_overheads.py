"""Benchmark: three costs side by side in one run, on the same model and sentences.

(1) `ensdist-seqkd` (decode a split with the teachers' beam search and write a data directory
    with the hypotheses as targets) against `fairseq-generate` printing the same hypotheses;
(2) the subword post-processing of `ensdist-evaluate --bleu`: `--post-process auto` (on
    SentencePiece data: pieces joined back into words before BLEU) against `--post-process none`;
(3) the progress lines of `ensdist-evaluate`: the default (a line every 500 sentences and one at
    the end) against `--no-progress-bar`, and against `--log-interval 1` (a line per sentence,
    the worst case).
Every command is a whole process (start-up, model loading, decoding, writing); the commands are
run in turn, `--repeats` times, and each ratio is of medians. CPU seconds (user + system) are
the robust measure on a shared machine (OMP_NUM_THREADS=1: one core each); wall seconds too.

Without --data/--path it builds a synthetic SentencePiece-style corpus (words of one or two
pieces, each word's first piece marked with U+2581, so that "auto" resolves to sentencepiece)
and a small transformer trained for a few updates; the cost of decoding does not depend on how
well the model translates.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overheads.py [--data DIR --path CKPT] \
        [--split test] [--repeats 3] [--work DIR]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_evaluate as BE  # noqa: E402  (its measure(), run() and the demo's GEN_ARGS)

WORDS = 3000  # per side
SENTENCES = {"train": 600, "valid": 50, "test": 1000}
LENGTHS = (5, 25)  # words a sentence
MODEL_ARGS = [
    "--arch",
    "transformer",
    "--share-all-embeddings",
    "--encoder-layers",
    "2",
    "--decoder-layers",
    "2",
    "--encoder-embed-dim",
    "128",
    "--decoder-embed-dim",
    "128",
    "--encoder-ffn-embed-dim",
    "256",
    "--decoder-ffn-embed-dim",
    "256",
    "--encoder-attention-heads",
    "4",
    "--decoder-attention-heads",
    "4",
]


def pieces(prefix: str, w: int) -> str:
    """Word w as SentencePiece pieces: one or two, the first marked as a word start."""
    return f"\u2581{prefix}{w}" + (f" {prefix}x{w % 50}" if w % 3 == 0 else "")


def synthetic_model(work: str):
    return BE.synthetic_model(work, SENTENCES, WORDS, LENGTHS, pieces, MODEL_ARGS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="binarized data directory (default: synthetic)")
    ap.add_argument("--path", help="checkpoint (default: a small synthetic model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per command (median)")
    ap.add_argument("--work", help="keep the synthetic model here (reused)")
    args = ap.parse_args()
    if (args.data is None) != (args.path is None):
        sys.exit("error: give both --data and --path, or neither")
    work = args.work or tempfile.mkdtemp(prefix="bench_overheads_")
    os.makedirs(work, exist_ok=True)
    try:
        data, ckpt = BE.data_and_model(args, work, synthetic_model)
        common = ["--max-tokens", str(args.max_tokens), "--cpu"]
        out = os.path.join(work, "out")

        def generate(run):
            return [
                os.path.join(BE.BIN, "fairseq-generate"),
                data,
                "--user-dir",
                BE.PLUGIN_DIR,
                "--path",
                ckpt,
                "--gen-subset",
                args.split,
                "--required-batch-size-multiple",
                "1",
                *BE.GEN_ARGS,
                *common,
            ]

        def seqkd(run):
            return [
                os.path.join(BE.BIN, "ensdist-seqkd"),
                data,
                "--path",
                ckpt,
                "--split",
                args.split,
                "--out",
                os.path.join(out, f"seqkd{run}"),  # a fresh directory: nothing to resume
                *BE.GEN_ARGS,
                *common,
            ]

        def evaluate(*extra):
            def make(run):
                return [
                    os.path.join(BE.BIN, "ensdist-evaluate"),
                    data,
                    "--path",
                    ckpt,
                    "--split",
                    args.split,
                    "--name",
                    "bench",
                    "--bleu",
                    *BE.GEN_ARGS,
                    *common,
                    "--output-json",
                    os.path.join(out, f"evaluate{run}_{len(extra)}_{abs(hash(extra))}.json"),
                    *extra,
                ]

            return make

        commands = {
            "fairseq-generate": generate,
            "ensdist-seqkd": seqkd,
            "evaluate auto": evaluate("--post-process", "auto"),
            "evaluate none": evaluate("--post-process", "none"),
            "evaluate auto --no-progress-bar": evaluate(
                "--post-process", "auto", "--no-progress-bar"
            ),
            "evaluate auto --log-interval 1": evaluate(
                "--post-process", "auto", "--log-interval", "1"
            ),
        }
        wall = {n: [] for n in commands}
        cpu = {n: [] for n in commands}
        for r in range(args.repeats):  # in turn, so load on the shared cores hits every command
            os.makedirs(out, exist_ok=True)
            for name, make in commands.items():
                seconds, _mib, cpu_seconds = BE.measure(make(r))
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
            shutil.rmtree(out)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    w = {n: statistics.median(v) for n, v in wall.items()}
    c = {n: statistics.median(v) for n, v in cpu.items()}
    print(
        f"model: {ckpt if args.path else 'synthetic 2+2-layer d=128 transformer'}; split "
        f"{args.split}; {' '.join(BE.GEN_ARGS)}; --max-tokens {args.max_tokens}; median of "
        f"{args.repeats} runs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n"
    )
    print("| command | CPU s | wall s |")
    print("|---|---:|---:|")
    for n in commands:
        print(f"| {n} | {c[n]:.2f} | {w[n]:.2f} |")
    print("\n| comparison | CPU ratio | wall ratio |")
    print("|---|---:|---:|")
    for label, a, b in (
        ("ensdist-seqkd / fairseq-generate", "ensdist-seqkd", "fairseq-generate"),
        ("evaluate --post-process auto / none", "evaluate auto", "evaluate none"),
        (
            "evaluate default progress / --no-progress-bar",
            "evaluate auto",
            "evaluate auto --no-progress-bar",
        ),
        (
            "evaluate --log-interval 1 / --no-progress-bar",
            "evaluate auto --log-interval 1",
            "evaluate auto --no-progress-bar",
        ),
    ):
        print(f"| {label} | {c[a] / c[b]:.3f} | {w[a] / w[b]:.3f} |")


if __name__ == "__main__":
    main()

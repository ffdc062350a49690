"""Benchmark: `ensdist-evaluate` against fairseq's own commands on the same data and model.

Measures, in one run, on the split and on the split repeated 4 times:
(1) calibration: `ensdist-evaluate --no-bleu` against `fairseq-validate`, target tokens per
wall-clock second of each whole command (start-up, model loading, scoring), as a ratio;
(2) with BLEU (`--bleu`): `ensdist-evaluate` (teacher forcing + in-process beam search, models
loaded once) against `fairseq-validate` + `fairseq-generate --quiet` of the same model with the
same search options, the ratio of the summed wall times to evaluate's (target >= 0.9);
(3) the peak resident memory of each, which should stay flat from 1x to 4x (only the batch is
ever of size V; per token evaluate keeps 5 confidence/correct pairs; hypotheses are strings).
Prints markdown tables (BENCHMARKS.md).

Without --data/--path it builds a synthetic corpus (a 16k-word joined vocabulary, sentences of
10-40 words) and a small transformer trained for a few updates; throughput does not depend on
how well the model translates.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluate.py [--data DIR --path CKPT] \
        [--bleu] [--repeats N] [--work DIR]

--work keeps the synthetic model (and the 4x copy) between runs.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

BIN = os.path.dirname(sys.executable)
PLUGIN_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ensdist_fairseq"
)
SYNTHETIC_WORDS = 8000  # per side; a joined dictionary of ~16k types, like a small BPE vocabulary
SYNTHETIC_SENTENCES = {"train": 2000, "valid": 100, "test": 1000}
SYNTHETIC_LENGTHS = (10, 40)
MODEL_ARGS = [
    "--arch",
    "transformer",
    "--share-all-embeddings",
    "--encoder-layers",
    "3",
    "--decoder-layers",
    "3",
    "--encoder-embed-dim",
    "256",
    "--decoder-embed-dim",
    "256",
    "--encoder-ffn-embed-dim",
    "1024",
    "--decoder-ffn-embed-dim",
    "1024",
    "--encoder-attention-heads",
    "4",
    "--decoder-attention-heads",
    "4",
]
# Runs a command in a fresh parent so RUSAGE_CHILDREN is that command's peak RSS alone.
PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
    "stderr=subprocess.DEVNULL).returncode; "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(rc, time.perf_counter() - t, u.ru_maxrss, u.ru_utime + u.ru_stime)"
)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:2])} failed: {p.stderr.strip()[-2000:]}")
    return p


def measure(cmd):
    """(wall seconds, peak RSS in MiB, CPU seconds) of one command.

    CPU seconds (user + system) are the robust measure on a shared machine: with
    OMP_NUM_THREADS=1 each command runs on one core, so its CPU time is its wall time on a quiet
    machine, whatever else the cores are doing (up to cache and memory-bandwidth contention)."""
    out = run([sys.executable, "-c", PEAK_RSS_WRAPPER, *cmd]).stdout.split()
    if out[0] != "0":
        sys.exit(f"error: {' '.join(cmd)} exited with {out[0]}")
    return float(out[1]), int(out[2]) / 1024.0, float(out[3])  # ru_maxrss is in KiB on Linux


def plain_word(prefix: str, w: int) -> str:
    return f"{prefix}{w}"


def synthetic_model(
    work,
    sentences=SYNTHETIC_SENTENCES,
    words=SYNTHETIC_WORDS,
    lengths=SYNTHETIC_LENGTHS,
    word=plain_word,
    model_args=MODEL_ARGS,
):
    """(data dir, checkpoint) of a synthetic reversed-and-renamed corpus and a model trained 3
    updates on it: throughput does not depend on quality. word(prefix, w) renders word w."""
    rng = random.Random(0)
    raw, data = os.path.join(work, "raw"), os.path.join(work, "bin")
    os.makedirs(raw)
    for split, n in sentences.items():
        with (
            open(os.path.join(raw, f"{split}.en"), "w", encoding="utf-8") as fe,
            open(os.path.join(raw, f"{split}.de"), "w", encoding="utf-8") as fd,
        ):
            for _ in range(n):
                drawn = [rng.randrange(words) for _ in range(rng.randint(*lengths))]
                fe.write(" ".join(word("s", w) for w in drawn) + "\n")
                fd.write(" ".join(word("t", (w * 7) % words) for w in reversed(drawn)) + "\n")
    run(
        [
            os.path.join(BIN, "fairseq-preprocess"),
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            *[a for s in sentences for a in (f"--{s}pref", os.path.join(raw, s))],
            "--destdir",
            data,
            "--joined-dictionary",
            "--workers",
            "1",
        ]
    )
    save = os.path.join(work, "model")
    run(
        [
            os.path.join(BIN, "fairseq-train"),
            data,
            *model_args,
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--max-tokens",
            "4000",
            "--max-update",
            "3",
            "--cpu",
            "--save-dir",
            save,
            "--no-epoch-checkpoints",
            "--no-save-optimizer-state",
            "--disable-validation",
        ]
    )
    return data, os.path.join(save, "checkpoint_last.pt")


def data_and_model(args, work, make=synthetic_model):
    """(data, checkpoint): --data/--path if given, else the synthetic model kept in `work` from
    an earlier run, else a new one made by make(work)."""
    if args.data:
        return args.data, args.path
    kept = os.path.join(work, "model", "checkpoint_last.pt")
    if os.path.isfile(kept):
        return os.path.join(work, "bin"), kept
    return make(work)


def replicate_split(data, split, factor, out):
    """A copy of `data` whose `split` is the original repeated `factor` times."""
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    os.makedirs(out)
    src, tgt = data_utils.infer_language_pair(data)
    for name in os.listdir(data):
        if name.startswith("dict."):
            shutil.copy(os.path.join(data, name), out)
    for lang in (src, tgt):
        prefix = f"{split}.{src}-{tgt}.{lang}"
        impl = indexed_dataset.infer_dataset_impl(os.path.join(data, prefix))
        vocab = len(Dictionary.load(os.path.join(data, f"dict.{lang}.txt")))  # sets the int dtype
        builder = indexed_dataset.make_builder(
            os.path.join(out, prefix + ".bin"), impl=impl, vocab_size=vocab
        )
        for _ in range(factor):
            builder.merge_file_(os.path.join(data, prefix))
        builder.finalize(os.path.join(out, prefix + ".idx"))
    return out


GEN_ARGS = [
    "--beam",
    "4",
    "--lenpen",
    "1.0",
    "--max-len-a",
    "1.5",
    "--max-len-b",
    "10",
]  # the demo's


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="binarized data directory (default: synthetic)")
    ap.add_argument("--path", help="checkpoint (default: a small synthetic model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per command (median)")
    ap.add_argument(
        "--bleu",
        action="store_true",
        help="also time evaluate with BLEU against fairseq-validate + fairseq-generate",
    )
    ap.add_argument("--work", help="keep the synthetic model and the 4x copy here (reused)")
    args = ap.parse_args()
    if (args.data is None) != (args.path is None):
        sys.exit("error: give both --data and --path, or neither")
    work = args.work or tempfile.mkdtemp(prefix="bench_evaluate_")
    os.makedirs(work, exist_ok=True)
    try:
        data, ckpt = data_and_model(args, work)
        data4 = os.path.join(work, "bin4x")
        if not os.path.isdir(data4):
            replicate_split(data, args.split, 4, data4)
        common = ["--max-tokens", str(args.max_tokens), "--cpu"]

        def validate(d):
            # --user-dir: the plugin allow-lists argparse.Namespace for torch's safe loader.
            return [
                os.path.join(BIN, "fairseq-validate"),
                d,
                "--user-dir",
                PLUGIN_DIR,
                "--task",
                "translation",
                "--path",
                ckpt,
                "--valid-subset",
                args.split,
                "--required-batch-size-multiple",
                "1",
                *common,
            ]

        def generate(d):
            return [
                os.path.join(BIN, "fairseq-generate"),
                d,
                "--user-dir",
                PLUGIN_DIR,
                "--path",
                ckpt,
                "--gen-subset",
                args.split,
                "--post-process",
                "sentencepiece",
                "--required-batch-size-multiple",
                "1",
                "--quiet",
                *GEN_ARGS,
                *common,
            ]

        def evaluate(d, tag, bleu):
            return [
                os.path.join(BIN, "ensdist-evaluate"),
                d,
                "--path",
                ckpt,
                "--split",
                args.split,
                "--name",
                tag,
                "--bleu" if bleu else "--no-bleu",
                *common,
                *(GEN_ARGS if bleu else []),
                "--output-json",
                os.path.join(work, f"{tag}.json"),
            ]

        commands = {"validate": validate, "evaluate": lambda d, tag: evaluate(d, tag, False)}
        if args.bleu:
            commands.update(
                generate=lambda d, tag: generate(d),
                evaluate_bleu=lambda d, tag: evaluate(d, tag, True),
            )
        rows, tokens = {}, {}
        for tag, d in (("1x", data), ("4x", data4)):
            times = {name: [] for name in commands}
            cpu = {name: [] for name in commands}
            rss = {}
            for _ in range(args.repeats):  # alternate so load on the shared cores hits all
                for name, make in commands.items():
                    cmd = make(d, tag) if name != "validate" else make(d)
                    seconds, mib, cpu_seconds = measure(cmd)
                    times[name].append(seconds)
                    cpu[name].append(cpu_seconds)
                    rss[name] = max(rss.get(name, 0.0), mib)
            with open(os.path.join(work, f"{tag}.json")) as f:
                tokens[tag] = json.load(f)["num_tokens"]
            rows[tag] = (
                {n: statistics.median(t) for n, t in times.items()},
                rss,
                {n: statistics.median(t) for n, t in cpu.items()},
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"model: {ckpt if args.path else 'synthetic 3+3-layer d=256 transformer'}; "
        f"split {args.split}; --max-tokens {args.max_tokens}; median of {args.repeats} runs; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n"
    )
    print(
        "| test set | target tokens | fairseq-validate s | ensdist-evaluate --no-bleu s | "
        "throughput ratio (validate / evaluate time) | peak RSS validate MiB | "
        "peak RSS evaluate MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for tag, (t, rss, _c) in rows.items():
        print(
            f"| {tag} | {tokens[tag]} | {t['validate']:.2f} | {t['evaluate']:.2f} | "
            f"{t['validate'] / t['evaluate']:.2f} | {rss['validate']:.0f} | {rss['evaluate']:.0f} |"
        )
    growth = rows["4x"][1]["evaluate"] / rows["1x"][1]["evaluate"]
    print(f"\nensdist-evaluate --no-bleu peak RSS 4x / 1x: {growth:.3f}")
    if args.bleu:
        print(f"\nWith BLEU ({' '.join(GEN_ARGS)}):\n")
        print(
            "| test set | fairseq-validate s | fairseq-generate s | sum s | ensdist-evaluate s | "
            "ratio (sum / evaluate) | peak RSS generate MiB | peak RSS evaluate MiB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for tag, (t, rss, _c) in rows.items():
            both = t["validate"] + t["generate"]
            print(
                f"| {tag} | {t['validate']:.2f} | {t['generate']:.2f} | {both:.2f} | "
                f"{t['evaluate_bleu']:.2f} | {both / t['evaluate_bleu']:.2f} | "
                f"{rss['generate']:.0f} | {rss['evaluate_bleu']:.0f} |"
            )
        growth = rows["4x"][1]["evaluate_bleu"] / rows["1x"][1]["evaluate_bleu"]
        print(f"\nensdist-evaluate (BLEU) peak RSS 4x / 1x: {growth:.3f}")
    print("\nCPU seconds (user + system; load-independent on a shared machine):\n")
    names = [n for n in ("validate", "evaluate", "generate", "evaluate_bleu") if n in commands]
    print(
        "| test set | "
        + " | ".join(names)
        + " | validate / evaluate"
        + (" | (validate + generate) / evaluate_bleu |" if args.bleu else " |")
    )
    print("|---|" + "---:|" * (len(names) + 1 + bool(args.bleu)))
    for tag, (_t, _r, c) in rows.items():
        cells = [f"{c[n]:.2f}" for n in names] + [f"{c['validate'] / c['evaluate']:.2f}"]
        if args.bleu:
            cells.append(f"{(c['validate'] + c['generate']) / c['evaluate_bleu']:.2f}")
        print(f"| {tag} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

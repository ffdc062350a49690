"""Bad inputs as a table : case -> the one line a user sees, or a correct result.

Every "error" case asserts: exit status != 0, exactly one non-empty stderr line (besides
ensdist-memoize's own progress lines), starting with `error: ` and matching the expected
message (which names the file or the flag), no "Traceback".
Every "ok" case asserts exit status 0 and checks the result. Python warnings are silenced
(PYTHONWARNINGS=ignore): they come from fairseq/torch/hydra, not from our error reporting.

Runners: "cli" runs the real executable in a subprocess; "fork" runs the same entry point in a
forked copy of this process (no interpreter and import start-up: several times faster) with the
interpreter's own top-level handling (SystemExit, then sys.excepthook, then exit status 1).
The fairseq commands use the plugin's excepthook in both runners; the cases that prove the real
executable path (a DataLoader worker, fairseq's own checkpoint loader) use "cli".

The README's reliability section counts this table: `pytest tests/test_bad_inputs.py -q`
(one test per case); the store/memoize/checkpoint cases first, the evaluator's in their own list.
"""

import collections
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from fairseq_cli import train as fairseq_train  # noqa: E402  (fairseq first: the plugin registers)
from tiny_fairseq import TINY_ARCH_ARGS

import ensdist_fairseq
from ensdist_fairseq.store import format as store_format
from ensdist_fairseq.store import shards

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

ensdist_fairseq.register_with_fairseq()  # task, models and the excepthook, as --user-dir does

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.dirname(ensdist_fairseq.__file__)
TOPK = 8
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
PROGRESS = "ensdist-memoize: "  # memoize's progress lines (stderr) are not errors

# name, runner ("cli" | "fork"), command builder fx -> (entry, argv[, cwd]), expected:
#   a regex for the one error line (after "error: "), or a callable fx -> None checking a result;
# code: the exact exit status of an error (2: the command line, 1: an input or the run), when
#   given; after: a callable fx -> None run after an error case (files untouched, nothing left).
Case = collections.namedtuple(
    "Case", "name runner command expected code after", defaults=(None, None)
)


# ---- runners ------------------------------------------------------------------------------------


def run_cli(argv, cwd=None):
    p = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)
    return p.returncode, p.stderr


def run_forked(entry, argv, cwd=None):
    err = tempfile.NamedTemporaryFile(delete=False, suffix=".stderr")
    err.close()
    pid = os.fork()
    if pid == 0:  # child: behave like `python -m <entry>` would at the top level
        code = 1
        try:
            fd = os.open(err.name, os.O_WRONLY | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
            import warnings

            warnings.simplefilter("ignore")
            torch.set_num_threads(1)
            if cwd:
                os.chdir(cwd)
            sys.argv = list(argv)
            try:
                rc = entry()
                code = rc if isinstance(rc, int) else 0
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
            except BaseException:
                sys.excepthook(*sys.exc_info())
                code = 1
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(err.name) as f:
        text = f.read()
    os.remove(err.name)
    return os.waitstatus_to_exitcode(status), text


def memoize_entry():
    from ensdist_fairseq.cli.memoize import main

    return main()


def spm_entry():
    from ensdist_fairseq.cli import sentencepiece

    return sentencepiece.main()


def ding_entry():
    from ensdist_fairseq.cli import corpus_ding

    return corpus_ding.main()


# ---- fixtures: built once per module ------------------------------------------------------------


class Fixtures:
    pass


def _rewrite_rows(src, dst, change):
    """Copy the store `src` to `dst` and rewrite row 0 of every sentence through `change`
    (indices, probs, precision) -> same; the CRC is recomputed: the content is what is bad."""
    shutil.copy(src, dst)
    reader = store_format.StoreReader(dst)
    writer = store_format.RowWriter(dst, reader.layout, reader.offsets)
    for i in range(reader.num_sentences):
        idx, probs, prec = reader.read(i)
        idx, probs, prec = idx.copy(), probs.astype(np.float32), prec.copy()
        change(idx, probs, prec)
        writer.write_sentence(i, idx, probs, prec)
    writer.close()
    return dst


def _checkpoint_with(src, dst, edit):
    state = torch.load(src, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, dst)
    return dst


@pytest.fixture(scope="module")
def fx(tiny_data, tiny_checkpoints, tmp_path_factory):
    from ensdist_fairseq.cli.memoize import main

    root = tmp_path_factory.mktemp("bad_inputs")
    f = Fixtures()
    f.root, f.data, f.ckpts = root, tiny_data, tiny_checkpoints
    f.store = str(root / "teacher.h5")
    main(memoize_args(f, f.store))
    vocab = store_format.StoreReader(f.store).provenance.vocab_size

    def put(name, i, j=None, value=None, where="probs"):
        def change(idx, probs, prec):
            {"probs": probs, "idx": idx, "prec": prec}[where][(i,) if j is None else (i, j)] = value

        return _rewrite_rows(f.store, str(root / name), change)

    f.nan_prob = put("nan_prob.h5", 0, 1, np.nan)
    f.neg_prob = put("neg_prob.h5", 0, 0, -0.5)
    f.sum_gt1 = _rewrite_rows(f.store, str(root / "sum.h5"), lambda i, p, q: p.__setitem__(0, 0.9))
    f.bad_index = put("index.h5", 0, 2, vocab, where="idx")
    f.nan_prec = put("nan_prec.h5", 0, None, np.nan, where="prec")
    f.zero_prec = put("zero_prec.h5", 0, None, 0.0, where="prec")
    f.inf_prec = put("inf_prec.h5", 0, None, np.inf, where="prec")
    f.crc = str(root / "crc.h5")
    shutil.copy(f.store, f.crc)
    layout = store_format.StoreReader(f.crc).layout
    with open(f.crc, "r+b") as fh:  # every stored CRC zeroed: any sentence read is corrupt
        fh.seek(layout.byte_offset["crc32"])
        fh.write(b"\0" * layout.nbytes["crc32"])
    f.truncated_store = str(root / "truncated.h5")
    with open(f.store, "rb") as a, open(f.truncated_store, "wb") as b:
        b.write(a.read()[: os.path.getsize(f.store) // 2])
    # another split's store: valid file, wrong provenance for training on train
    f.valid_split_store = str(root / "valid_split.h5")
    main(memoize_args(f, f.valid_split_store, "--split", "valid"))
    # a chunk file (first_sentence != 0) instead of a whole store
    f.chunk = str(root / "chunk.h5")
    shutil.copy(f.store, f.chunk)
    import h5py

    with h5py.File(f.chunk, "r+") as h:
        h.attrs["first_sentence"] = 64
    # a same-size dictionary in another order, next to the same binarized data
    f.reordered = str(root / "reordered")
    shutil.copytree(tiny_data, f.reordered)
    for lang in ("en", "de"):
        p = os.path.join(f.reordered, f"dict.{lang}.txt")
        lines = open(p, encoding="utf-8").read().splitlines(keepends=True)
        lines[0], lines[1] = lines[1], lines[0]
        open(p, "w", encoding="utf-8").write("".join(lines))
    # a teacher trained by fairseq-train with --task translation_distill (as the recipes do),
    # which records its dictionary's sha256 in the checkpoint
    import tiny_fairseq

    f.recording = tiny_fairseq.train_tiny(
        tiny_data,
        str(root / "recording"),
        seed=1,
        max_update=1,
        extra=["--user-dir", USER_DIR, "--task", "translation_distill"],
    )
    sha = hashlib.sha256(open(os.path.join(tiny_data, "dict.de.txt"), "rb").read()).hexdigest()
    assert (
        torch.load(f.recording, weights_only=True)["task_state"]["target_dictionary_sha256"] == sha
    )

    def nan_output(state):
        w = state["model"]["decoder.output_projection.weight"]
        w[7] = float("nan")  # every position's logit of token 7: NaN

    f.nan_teacher = _checkpoint_with(tiny_checkpoints[0], str(root / "nan_teacher.pt"), nan_output)
    f.truncated_ckpt_dir = str(root / "resume")
    os.makedirs(f.truncated_ckpt_dir)
    data = open(tiny_checkpoints[0], "rb").read()
    open(os.path.join(f.truncated_ckpt_dir, "checkpoint_last.pt"), "wb").write(
        data[: len(data) // 2]
    )
    f.truncated_ckpt = os.path.join(f.truncated_ckpt_dir, "checkpoint_last.pt")
    # an unrelated bin/ in the current directory (the old check resolved paths against it)
    f.cwd_with_bin = str(root / "elsewhere")
    shutil.copytree(f.reordered, os.path.join(f.cwd_with_bin, "bin"))
    # a split without sentences (fairseq cannot even open it)
    f.with_empty = str(root / "with_empty")
    shutil.copytree(tiny_data, f.with_empty)
    from fairseq.data import indexed_dataset

    for lang in ("en", "de"):
        prefix = os.path.join(f.with_empty, f"empty.en-de.{lang}")
        indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=100).finalize(
            prefix + ".idx"
        )
    # chunks left by a run with other inputs (another --topk) under this run's --output
    f.other_chunks_out = str(root / "other_chunks.h5")
    os.makedirs(shards.shard_dir(f.other_chunks_out))
    shutil.copy(f.store, shards.chunk_path(f.other_chunks_out, (0, 100)))
    # corpus files
    f.raw = str(root / "raw")
    write_raw(f.raw)
    return f


def memoize_args(f, output, *extra):
    return [
        f.data,
        "--path",
        ":".join(f.ckpts),
        "--output",
        output,
        "--topk",
        str(TOPK),
        "--cpu",
        "--max-tokens",
        "200",
        "--chunk-sentences",
        "100",
        *extra,
    ]


def write_raw(raw):
    os.makedirs(raw)
    words = "the a red green small big cat dog bird house tree river".split()
    for split, n in (("train", 200), ("valid", 20), ("test", 20)):
        en = [
            " ".join(words[(k * 7 + j * 5) % len(words)] for j in range(3 + k % 4)) + "."
            for k in range(n)
        ]
        for lang in ("en", "de"):
            open(os.path.join(raw, f"{split}.{lang}"), "w").write("\n".join(en) + "\n")


def raw_variant(f, name, edit):
    d = os.path.join(str(f.root), name)
    if not os.path.exists(d):
        shutil.copytree(f.raw, d)
        edit(d)
    return d


def train_argv(f, *extra, data=None, num_workers=0):
    return [
        os.path.join(BIN, "fairseq-train"),
        data or f.data,
        "--user-dir",
        USER_DIR,
        "--task",
        "translation_distill",
        *TINY_ARCH_ARGS,
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--max-tokens",
        "200",
        "--cpu",
        "--max-update",
        "2",
        "--no-save",
        "--disable-validation",
        "--criterion",
        "cross_entropy",
        "--num-workers",
        str(num_workers),
        *extra,
    ]


def train_on(store_attr, *extra, num_workers=0):
    return lambda f: (
        fairseq_train.cli_main,
        train_argv(f, "--teacher-store", getattr(f, store_attr), *extra, num_workers=num_workers),
    )


def memoize_with(*extra, paths=None, data=None, output=None, cwd=None):
    def build(f):
        args = memoize_args(
            f, output(f) if output else str(f.root / f"m-{abs(hash(extra))}.h5"), *extra
        )
        if data:
            args[0] = data(f)
        if paths:
            args[args.index("--path") + 1] = paths(f)
        return (memoize_entry, ["ensdist-memoize", *args], cwd(f) if cwd else None)

    return build


def _store_ok(f, path):
    store_format.StoreReader(path).verify()


# ---- the table (store, memoize, checkpoints, dictionaries, corpus) -------------------------

S = r"sentence \d+ row 0: "
CASES = [
    # the store, read while training (fairseq-train --task translation_distill --teacher-store)
    Case(
        "store CRC mismatch found mid-training, in a DataLoader worker",
        "cli",
        lambda f: (None, train_argv(f, "--teacher-store", f.crc, num_workers=1)),
        r".*crc.h5: corrupt data for sentence \d+ \(CRC-32 mismatch\)",
    ),
    Case(
        "store probability NaN",
        "fork",
        train_on("nan_prob"),
        r".*nan_prob.h5: " + S + r"probability nan is not in \[0, 1\]",
    ),
    Case(
        "store probability negative",
        "fork",
        train_on("neg_prob"),
        r".*neg_prob.h5: " + S + r"probability -0.5 is not in \[0, 1\]",
    ),
    Case(
        "store row sums to more than 1",
        "fork",
        train_on("sum_gt1"),
        r".*sum.h5: " + S + r"probabilities sum to [\d.]+ > 1",
    ),
    Case(
        "store index >= V",
        "fork",
        train_on("bad_index"),
        r".*index.h5: " + S + r"token index \d+ is not in 0..\d+",
    ),
    Case(
        "store precision NaN",
        "fork",
        train_on("nan_prec"),
        r".*nan_prec.h5: " + S + r"precision nan is not finite and > 0",
    ),
    Case(
        "store precision 0",
        "fork",
        train_on("zero_prec"),
        r".*zero_prec.h5: " + S + r"precision 0.0 is not finite and > 0",
    ),
    Case(
        "store precision +inf (format 2)",
        "fork",
        train_on("inf_prec"),
        r".*inf_prec.h5: " + S + r"precision inf is not finite and > 0",
    ),
    Case("store truncated", "fork", train_on("truncated_store"), r".*truncated.h5: .*"),
    Case(
        "store of another split",
        "fork",
        train_on("valid_split_store"),
        r".*valid_split.h5: split differs: store 'valid', expected 'train' \(split 'train' of .*\)",
    ),
    Case(
        "store chunk instead of a whole store",
        "fork",
        train_on("chunk"),
        r".*chunk.h5: holds sentences 64..363 of a split: a chunk, not a whole store",
    ),
    Case(
        "--teacher-topk larger than stored",
        "fork",
        train_on("store", "--teacher-topk", "9"),
        r"--teacher-topk 9: must be in 1..8 \(the store .*teacher.h5 holds V'=8\)",
    ),
    Case(
        "store of a reordered same-size dictionary",
        "fork",
        lambda f: (
            fairseq_train.cli_main,
            train_argv(f, "--teacher-store", f.store, data=f.reordered),
        ),
        r".*teacher.h5: dictionary sha256 differs: store \w+…, expected \w+… \(split 'train' of .*reordered\)",
    ),
    # checkpoints
    Case(
        "truncated checkpoint_last.pt on fairseq-train resume",
        "cli",
        lambda f: (
            None,
            [a for a in train_argv(f) if a != "--no-save"] + ["--save-dir", f.truncated_ckpt_dir],
        ),
        r".*resume/checkpoint_last.pt: not a loadable fairseq checkpoint \(.*\)",
    ),
    Case(
        "memoize with a truncated checkpoint",
        "fork",
        memoize_with(paths=lambda f: f.truncated_ckpt),
        r".*checkpoint_last.pt: not a loadable fairseq checkpoint \(.*\)",
    ),
    Case(
        "memoize with a checkpoint that does not exist",
        "fork",
        memoize_with(paths=lambda f: "/nonexistent.pt"),
        r"/nonexistent.pt: checkpoint not found",
    ),
    # dictionaries: content, never a path against the current directory
    Case(
        "memoize: checkpoint recorded another dictionary (same size, reordered)",
        "fork",
        memoize_with(paths=lambda f: f.recording, data=lambda f: f.reordered),
        r".*recording/checkpoint_last.pt: trained with another dictionary than .*reordered/dict.de.txt \(sha256 .*\)",
    ),
    Case(
        "fairseq-validate: checkpoint recorded another dictionary",
        "fork",
        lambda f: (
            _validate_entry,
            [
                "fairseq-validate",
                f.reordered,
                "--path",
                f.recording,
                "--user-dir",
                USER_DIR,
                "--task",
                "translation_distill",
                "--cpu",
                "--valid-subset",
                "valid",
                "--max-tokens",
                "500",
            ],
        ),
        r".*reordered/dict.de.txt: not the dictionary the model was trained with \(sha256 .*\)",
    ),
    Case(
        "fairseq-generate: checkpoint recorded another dictionary",
        "fork",
        lambda f: (
            _generate_entry,
            [
                "fairseq-generate",
                f.reordered,
                "--path",
                f.recording,
                "--user-dir",
                USER_DIR,
                "--task",
                "translation_distill",
                "--cpu",
                "--gen-subset",
                "valid",
                "--max-tokens",
                "500",
                "--beam",
                "1",
            ],
        ),
        r".*reordered/dict.de.txt: not the dictionary the model was trained with \(sha256 .*\)",
    ),
    Case(
        "memoize from a directory holding an unrelated bin/ (valid input)",
        "fork",
        memoize_with(
            output=lambda f: str(f.root / "from_elsewhere.h5"), cwd=lambda f: f.cwd_with_bin
        ),
        lambda f: _store_ok(f, str(f.root / "from_elsewhere.h5")),
    ),
    # memoize: inputs, output location, one writer
    Case(
        "memoize: a teacher outputs NaN",
        "fork",
        memoize_with(paths=lambda f: f.nan_teacher),
        r".*nan_teacher.pt: non-finite output \(log-probability nan\) at target token \d+ of sentence \d+ "
        r"of split 'train'; refusing to store it",
    ),
    Case(
        "memoize --output in a directory that is not writable",
        "fork",
        memoize_with(output=lambda f: "/proc/self/x.h5"),
        r"--output /proc/self/x.h5: directory /proc/self is not writable",
    ),
    Case(
        "memoize --output in a directory that does not exist",
        "fork",
        memoize_with(output=lambda f: str(f.root / "no" / "x.h5")),
        r"--output .*/no/x.h5: directory .*/no does not exist",
    ),
    Case(
        "memoize --output already exists",
        "fork",
        memoize_with(output=lambda f: f.store),
        r"--output .*teacher.h5: already exists \(remove it to memoize again\)",
    ),
    Case(
        "memoize while another memoize writes the same --output",
        "fork",
        lambda f: _locked_memoize(f),
        r"--output .*locked.h5: another ensdist-memoize is writing this store .*",
    ),
    Case(
        "memoize --topk larger than the vocabulary",
        "fork",
        memoize_with("--topk", "100000"),
        r"--topk 100000: must be in 1..\d+ \(the target vocabulary size\)",
    ),
    Case(
        "memoize --split that does not exist",
        "fork",
        memoize_with("--split", "nosuch"),
        r"--split nosuch: no such split in .*",
    ),
    Case(
        "memoize --max-tokens smaller than a sentence",
        "fork",
        memoize_with("--max-tokens", "3"),
        r"--max-tokens 3: sentence \d+ of split 'train' of .* has \d+ tokens",
    ),
    Case(
        "memoize an empty split",
        "cli",
        lambda f: (
            None,
            [
                os.path.join(BIN, "ensdist-memoize"),
                f.with_empty,
                *memoize_args(f, str(f.root / "e.h5"), "--split", "empty")[1:],
            ],
        ),
        r"--split empty: the split in .*with_empty has no sentences \(.*empty.en-de.en.bin is empty\)",
    ),
    Case(
        "memoize resumes over chunks left by other inputs",
        "fork",
        memoize_with("--topk", "4", output=lambda f: f.other_chunks_out),
        r".*other_chunks.h5.shards/chunk-000000000000-000000000100.h5: V' differs: store 8, expected 4 "
        r"\(left by a run with other inputs; delete .*other_chunks.h5.shards to start over\)",
    ),
    Case(
        "memoize --chunk-sentences 0",
        "fork",
        memoize_with("--chunk-sentences", "0"),
        r"argument --chunk-sentences: must be in 1\.\.2147483647, got 0 \(see ensdist-memoize --help\)",
    ),
    # corpus
    Case(
        "corpus: a lone \\r inside a line (pairs stay aligned)",
        "fork",
        lambda f: (
            spm_entry,
            [
                "spm",
                "--raw",
                raw_variant(f, "raw_cr", _lone_cr),
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "25",
                "--out",
                str(f.root / "spm_cr"),
            ],
        ),
        lambda f: _aligned(f, str(f.root / "spm_cr")),
    ),
    Case(
        "corpus: invalid UTF-8",
        "fork",
        lambda f: (
            spm_entry,
            [
                "spm",
                "--raw",
                raw_variant(f, "raw_utf8", _bad_utf8),
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "25",
                "--out",
                str(f.root / "spm_utf8"),
            ],
        ),
        r".*raw_utf8/train.de: line 3: invalid UTF-8 \(byte 0xff at column 1\)",
    ),
    Case(
        "corpus: the two sides have different line counts",
        "fork",
        lambda f: (
            spm_entry,
            [
                "spm",
                "--raw",
                raw_variant(f, "raw_uneven", _uneven),
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "25",
                "--out",
                str(f.root / "spm_uneven"),
            ],
        ),
        r".*raw_uneven/valid.en: 21 lines, but .*raw_uneven/valid.de has 20",
    ),
    Case(
        "corpus: Ding source with invalid UTF-8",
        "fork",
        lambda f: (
            ding_entry,
            ["ding", "--source", _bad_ding(f), "--out", str(f.root / "ding_out")],
        ),
        r".*ding_bad: line 2: invalid UTF-8 \(byte 0xfe at column 3\)",
    ),
]


def _generate_entry():
    from fairseq_cli import generate

    return generate.cli_main()


def _validate_entry():
    from fairseq_cli import validate

    return validate.cli_main()


def _locked_memoize(f):
    out = str(f.root / "locked.h5")
    lock = shards.OutputLock(out)  # held by this (parent) process: a live writer
    f._locks = getattr(f, "_locks", []) + [lock]
    return memoize_with(output=lambda g: out)(f)


def _lone_cr(d):
    p = os.path.join(d, "train.en")
    lines = open(p, "rb").read().split(b"\n")
    lines[10] = lines[10].replace(b" ", b"\r", 1)
    open(p, "wb").write(b"\n".join(lines))


def _bad_utf8(d):
    p = os.path.join(d, "train.de")
    lines = open(p, "rb").read().split(b"\n")
    lines[2] = b"\xff" + lines[2]
    open(p, "wb").write(b"\n".join(lines))


def _uneven(d):
    with open(os.path.join(d, "valid.en"), "a") as fh:
        fh.write("one more.\n")


def _bad_ding(f):
    p = str(f.root / "ding_bad")
    open(p, "wb").write(b"# header\nAb\xfe :: ab\n")
    return p


def _aligned(f, out):
    en = open(os.path.join(out, "train.en"), encoding="utf-8").read().split("\n")
    de = open(os.path.join(out, "train.de"), encoding="utf-8").read().split("\n")
    assert len(en) == len(de) == 201
    assert [x for i, x in enumerate(en) if i != 10] == [x for i, x in enumerate(de) if i != 10]


# ---- the evaluator's cases: add them to EVALUATOR_CASES below, same Case format -----------
# ----------------------------------------------------------------------------- (start) ----------
# The evaluator's progress lines on stderr are not errors either (startswith takes a tuple).
PROGRESS = (PROGRESS, "[evaluate] ", "[bleu] ")


def evaluate_entry():
    from ensdist_fairseq.cli.evaluate import main

    return main()


def _evaluate_disk_full():
    """ensdist-evaluate whose final write fails (disk full): the result is kept in the temp
    directory (here the fixtures' root), and the one line names that file."""
    import tempfile as _tempfile

    from ensdist_fairseq import atomic_files

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    atomic_files.write_text_atomically = disk_full  # in the forked child only
    _tempfile.tempdir = os.path.dirname(sys.argv[sys.argv.index("--output") + 1])
    os.makedirs(_tempfile.tempdir, exist_ok=True)
    return evaluate_entry()


def evaluate_with(*extra, paths=None, output=None, entry=evaluate_entry):
    def build(f):
        out = output(f) if output else str(f.root / f"eval-{abs(hash(extra))}.json")
        return (
            entry,
            [
                "ensdist-evaluate",
                f.data,
                "--path",
                paths(f) if paths else f.ckpts[0],
                "--name",
                "x",
                "--cpu",
                "--no-bleu",
                "--output",
                out,
                *extra,
            ],
        )

    return build


EVALUATOR_CASES = [
    Case(
        "evaluate --output in a read-only directory (refused before any work)",
        "fork",
        evaluate_with(output=lambda f: "/sys/r.json"),
        r"--output /sys/r.json: cannot write in /sys \(Permission denied\)",
    ),
    Case(
        "evaluate: the final write fails (the result is kept and named)",
        "fork",
        evaluate_with(output=lambda f: str(f.root / "full" / "r.json"), entry=_evaluate_disk_full),
        r"--output .*/full/r.json: cannot write \(No space left on device\); "
        r"it was saved to .*/full/r-\w+\.json",
    ),
    Case(
        "evaluate: a member outputs NaN",
        "fork",
        evaluate_with(paths=lambda f: f"{f.ckpts[0]}:{f.nan_teacher}"),
        r".*nan_teacher.pt: non-finite probabilities for sentence \d+ of split test of .*",
    ),
    Case(
        "evaluate --max-tokens smaller than a sentence",
        "fork",
        evaluate_with("--max-tokens", "3"),
        r"--max-tokens 3: sentence \d+ of split test of .* has \d+ tokens",
    ),
    Case(
        "evaluate --num-bins larger than the number of tokens",
        "fork",
        evaluate_with("--num-bins", "100000"),
        r"--num-bins 100000: more bins than the \d+ target tokens of split test of .*",
    ),
    Case(
        "evaluate: an option decoding does not know",
        "fork",
        evaluate_with("--nbest", "2"),
        r"unrecognized arguments: --nbest 2 \(decoding is in-process; .*\)",
    ),
    Case(
        "bleu-table --output-md in a read-only directory",
        "fork",
        lambda f: (
            _bleu_table_entry,
            [
                "ensdist-bleu-table",
                f.data,
                "--path",
                f.ckpts[0],
                "--output-json",
                str(f.root / "t.json"),
                "--output-md",
                "/sys/t.md",
            ],
        ),
        r"--output-md /sys/t.md: cannot write in /sys \(Permission denied\)",
    ),
    Case(
        "fairseq-generate --scoring ece: a member outputs NaN",
        "fork",
        lambda f: (
            _generate_entry,
            [
                "fairseq-generate",
                f.data,
                "--user-dir",
                USER_DIR,
                "--task",
                "translation_distill",
                "--path",
                f"{f.ckpts[0]}:{f.nan_teacher}",
                "--scoring",
                "ece",
                "--cpu",
                "--quiet",
            ],
        ),
        r"--path member 2 of 2: non-finite probabilities for sentence \d+ of the generated split",
    ),
]


def _generate_entry():
    import logging

    from fairseq_cli import generate

    logging.disable(
        logging.INFO
    )  # fairseq's own INFO lines (its config, dictionaries) are no errors
    return generate.cli_main()


def _bleu_table_entry():
    from ensdist_fairseq.cli.bleu_table import main

    return main()


# ----------------------------------------------------------------------------- (end) ------------


# ---- the commands: numbers in flags, results that belong together, outputs never inputs ----
# Each error case gives its exact exit status: 2 for a wrong command line (before any work),
# 1 for an input or a run that failed; `after` checks that what the user wrote is untouched.


def _cli_entry(module):
    def entry():
        import importlib

        return importlib.import_module(f"ensdist_fairseq.cli.{module}").main()

    return entry


UNCERTAINTY, REPORT, SWA, SPM, DING, CURVES, BLEU = (
    _cli_entry(m)
    for m in (
        "uncertainty",
        "report",
        "swa",
        "sentencepiece",
        "corpus_ding",
        "learning_curves",
        "bleu_table",
    )
)
EVALUATE = evaluate_entry
BIG = str(10**20)
PROGRESS = PROGRESS + ("[uncertainty] ",)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _tiny_spm(f):
    """A SentencePiece model of the tiny corpus (for raw --ood files)."""
    model = str(f.root / "tiny_spm.model")
    if not os.path.exists(model):
        import sentencepiece as spm

        spm.SentencePieceTrainer.train(
            input=os.path.join(os.path.dirname(f.data), "raw", "train.en"),
            model_prefix=model[: -len(".model")],
            vocab_size=30,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    return model


def _ood_text(f):
    """Six "\\n"-lines, one holding a lone "\\r" (text mode would read seven)."""
    p = str(f.root / "mine.txt")
    if not os.path.exists(p):
        open(p, "wb").write(b"s1 s2 s3\ns4\rs5 s6\ns7 s8\ns9 s10\ns11\ns12 s13\n")
    return p


def uncertainty_args(f, out, *extra, paths=None):
    return [
        "ensdist-uncertainty",
        f.data,
        "--path",
        paths or f.ckpts[0],
        "--name",
        os.path.basename(out),
        "--out",
        out,
        "--cpu",
        "--beam",
        "2",
        "--max-len-b",
        "10",
        "--limit",
        "8",
        *extra,
    ]


def uncertainty_with(*extra, out=None, entry=UNCERTAINTY):
    def build(f):
        o = out(f) if out else str(f.root / f"unc-{abs(hash(extra))}")
        return entry, uncertainty_args(f, o, *[e(f) if callable(e) else e for e in extra])

    return build


def _results(f):
    """A results directory: one ensdist-evaluate result and one ensdist-uncertainty system
    (in-domain + a raw --ood set), made by the commands themselves."""
    if not hasattr(f, "results"):
        from ensdist_fairseq.cli import evaluate, uncertainty

        res = str(f.root / "results")
        shutil.rmtree(res, ignore_errors=True)  # a failed earlier attempt
        os.makedirs(res)
        ev = ["--name", "m1", "--cpu", "--no-bleu", "--output", os.path.join(res, "m1.json")]
        assert evaluate.main([f.data, "--path", f.ckpts[0], *ev]) == 0
        out = os.path.join(res, "uncertainty", "a")
        ood = ["--ood", f"mine={_ood_text(f)}", "--spm-model", _tiny_spm(f)]
        assert uncertainty.main(uncertainty_args(f, out, *ood)[1:]) == 0
        f.results = res
    return f.results


def results_variant(name, edit):
    """A copy of the results directory, damaged by edit(copy)."""

    def build(f):
        d = str(f.root / f"results_{name}")
        if not os.path.exists(d):
            shutil.copytree(_results(f), d)
            edit(d)
        return REPORT, ["ensdist-report", d, "--out", str(f.root / f"report_{name}")]

    return build


def _unc(d, *parts):
    return os.path.join(d, "uncertainty", *parts)


def _edit_json(path, change):
    data = json.load(open(path))
    change(data)
    open(path, "w").write(json.dumps(data, indent=2))


def _cut_ood(d):
    p = _unc(d, "a", "mine.jsonl")
    lines = open(p, "rb").read().splitlines(keepends=True)
    open(p, "wb").write(b"".join(lines[:3]))


def _other_runs_file(d):
    p = _unc(d, "a", "test.jsonl")
    lines = [json.loads(x) for x in open(p)]
    lines[0]["score"] += 0.25  # same count, other content: a file of another run
    open(p, "w").write("".join(json.dumps(x) + "\n" for x in lines))


def _second_system(change):
    def edit(d):
        shutil.copytree(_unc(d, "a"), _unc(d, "b"))
        _edit_json(_unc(d, "b", "system.json"), change)

    return edit


def _beam_1(meta):
    meta["beam"], meta["generation"]["beam"] = 1, 1


def _limit_4(meta):
    meta["limit"] = 4


def _nan_measure(d):
    """A measure NaN in a set file (as json.dumps writes it by default), system.json updated
    to match: what an unchecked writer would leave."""
    p = _unc(d, "a", "test.jsonl")
    text = open(p).read().replace('"total": ', '"total": NaN, "was": ', 1)
    open(p, "w").write(text)
    sha = _sha(p)
    _edit_json(_unc(d, "a", "system.json"), lambda m: m["sets"][0].update(sha256=sha))


def _no_system_json(d):
    os.remove(_unc(d, "a", "system.json"))


def _no_sets(d):
    _edit_json(_unc(d, "a", "system.json"), lambda m: m.pop("sets"))


def _truncated_system(d):
    p = _unc(d, "a", "system.json")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])


def _fifo(d):
    os.mkfifo(os.path.join(d, "fifo.json"))


def _nan_result(d):
    p = os.path.join(d, "m1.json")
    text = open(p).read().replace('"nll": ', '"nll": NaN, "was": ', 1)
    open(p, "w").write(text)


def _decoded_differently(d):
    def bleu(beam):
        def change(r):
            r.update(bleu=20.0, generation={"beam": beam, "lenpen": 1.0}, post_process=None)

        return change

    shutil.copy(os.path.join(d, "m1.json"), os.path.join(d, "m2.json"))
    _edit_json(os.path.join(d, "m1.json"), bleu(5))
    _edit_json(os.path.join(d, "m2.json"), lambda r: (bleu(1)(r), r.update(name="m2")))


def _report_ok(f):
    text = open(str(f.root / "report_good" / "report.md"), encoding="utf-8").read()
    assert "Uncertainty: out-of-distribution detection" in text and "beam 2" in text
    meta = json.load(open(_unc(_results(f), "a", "system.json")))
    assert [(s["name"], s["sentences"]) for s in meta["sets"]] == [("test", 8), ("mine", 6)]


def _killed_rerun(f):
    """A rerun of system a with other options (--beam 1), killed after its first set: the
    directory still holds the finished beam-2 result, unmixed; the report reads that."""
    d = str(f.root / "results_killed")
    if not os.path.exists(d):
        shutil.copytree(_results(f), d)
        f.killed_before = {n: _sha(_unc(d, "a", n)) for n in os.listdir(_unc(d, "a"))}
        pid = os.fork()
        if pid == 0:
            try:
                import signal

                from ensdist_fairseq.cli import uncertainty
                from ensdist_fairseq.uncertainty import runner

                score, calls = runner.score_split, []

                def dies_on_second_set(*a, **k):
                    calls.append(1)
                    if len(calls) == 2:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return score(*a, **k)

                runner.score_split = dies_on_second_set
                sys.stderr = open(os.devnull, "w")
                ood = ["--ood", f"mine={_ood_text(f)}", "--spm-model", _tiny_spm(f)]
                uncertainty.main(uncertainty_args(f, _unc(d, "a"), *ood, "--beam", "1")[1:])
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == -9
    return REPORT, ["ensdist-report", d, "--out", str(f.root / "report_killed")]


def _killed_rerun_ok(f):
    d = _unc(str(f.root / "results_killed"), "a")
    after = {n: _sha(os.path.join(d, n)) for n in os.listdir(d) if ".part." not in n}
    assert after == f.killed_before  # the finished result, byte for byte
    text = open(str(f.root / "report_killed" / "report.md"), encoding="utf-8").read()
    assert "beam 2" in text


def _lone_cr_ok(f):
    out = str(f.root / "unc_cr")
    rows = [json.loads(x) for x in open(os.path.join(out, "mine.jsonl"), encoding="utf-8")]
    assert len(rows) == 6  # six "\n"-lines, not seven
    meta = json.load(open(os.path.join(out, "system.json")))
    assert meta["sets"][1]["sentences"] == 6 and meta["sets"][1]["sha256"] == _sha(
        os.path.join(out, "mine.jsonl")
    )


def _uncertainty_disk_full():
    import tempfile as _tempfile

    from ensdist_fairseq import atomic_files

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    atomic_files.write_text_atomically = disk_full  # in the forked child only
    _tempfile.tempdir = sys.argv[sys.argv.index("--out") + 1] + "-kept"
    os.makedirs(_tempfile.tempdir, exist_ok=True)
    return UNCERTAINTY()


def _kept_result_ok(f):
    kept = glob.glob(str(f.root / "unc_full-kept" / "system-*.json"))
    assert len(kept) == 1
    meta = json.load(open(kept[0]))
    test = os.path.join(str(f.root / "unc_full"), "test.jsonl")
    assert meta["sets"][0]["sha256"] == _sha(test) and meta["sets"][0]["sentences"] == 8


def _locked_uncertainty(f):
    from ensdist_fairseq.atomic_files import OutputLock

    out = str(f.root / "unc_locked")
    os.makedirs(out, exist_ok=True)
    f._locks = getattr(f, "_locks", []) + [
        OutputLock(os.path.join(out, ".ensdist-uncertainty.lock"), "x")
    ]
    return UNCERTAINTY, uncertainty_args(f, out)


def _no_set_files(out):
    def check(f):
        d = out(f)
        assert not glob.glob(os.path.join(d, "*.jsonl")) and not glob.glob(
            os.path.join(d, "*.part.*")
        )

    return check


def _system_dir_in_the_way(f):
    out = str(f.root / "unc_dir_in_way")
    os.makedirs(os.path.join(out, "system.json"), exist_ok=True)
    return out


def _a_file(f):
    p = str(f.root / "unc_is_a_file")
    open(p, "w").write("mine\n")
    return p


def _ood_inside_out(f):
    out = str(f.root / "unc_ood_inside")
    os.makedirs(out, exist_ok=True)
    p = os.path.join(out, "mine.jsonl")
    open(p, "w").write("s1 s2\n")
    f.ood_inside_sha = _sha(p)
    return UNCERTAINTY, uncertainty_args(f, out, "--ood", f"mine={p}", "--spm-model", _tiny_spm(f))


def _victim(f):
    p = str(f.root / "victim.pt")
    if not os.path.exists(p):
        shutil.copy(f.ckpts[0], p)
    f.victim_sha = _sha(p)
    return p


def _linked(f):
    p = str(f.root / "linked.pt")
    if not os.path.exists(p):
        os.link(_victim(f), p)
    return p


def _untouched(attr_path, attr_sha="victim_sha"):
    def check(f):
        assert _sha(attr_path(f)) == getattr(f, attr_sha)

    return check


def _swa_dir(f):
    d = str(f.root / "swa_run")
    if not os.path.exists(d):
        os.makedirs(d)
        for n in ("checkpoint1.pt", "checkpoint2.pt", "checkpoint_last.pt"):
            shutil.copy(f.ckpts[0], os.path.join(d, n))
    f.swa_before = {n: _sha(os.path.join(d, n)) for n in os.listdir(d)}
    return d


def _swa_untouched(f):
    d = str(f.root / "swa_run")
    assert {n: _sha(os.path.join(d, n)) for n in os.listdir(d)} == f.swa_before


def _swa(*extra, output):
    def build(f):
        d = _swa_dir(f)
        return SWA, ["ensdist-swa", "--save-dir", d, "--output", os.path.join(d, output), *extra]

    return build


def _spm_over_raw(f):
    d = raw_variant(f, "raw_spm_over", lambda d: None)
    f.raw_before = _sha(os.path.join(d, "train.en"))
    argv = ["spm", "--raw", d, "--src", "en", "--tgt", "de", "--vocab-size", "25", "--out", d]
    return SPM, argv


def _curves_over_log(f):
    log = str(f.root / "train.log")
    open(log, "w").write("epoch 001 | valid on 'valid' subset | loss 5 | nll_loss 4 | ppl 16\n")
    f.log_sha = _sha(log)
    return CURVES, ["ensdist-learning-curves", "--run", f"a={log}", "--output-md", log]


def _ood_dir(name, manifest_text):
    def build(f):
        d = str(f.root / f"ood_{name}")
        if not os.path.exists(d):
            os.makedirs(os.path.join(d, "bin"))
            for ext in (".bin", ".idx"):
                shutil.copy(
                    os.path.join(f.data, f"test.en-de.en{ext}"),
                    os.path.join(d, "bin", f"x.en{ext}"),
                )
            sha = _sha(os.path.join(f.data, "dict.en.txt"))
            open(os.path.join(d, "ood_sets.json"), "w").write(manifest_text(sha))
        return UNCERTAINTY, uncertainty_args(f, str(f.root / f"unc_ood_{name}"), "--ood-dir", d)

    return build


def _bad_utf8_file(name, data):
    def make(f):
        p = str(f.root / name)
        open(p, "wb").write(data)
        return p

    return make


COMMAND_CASES = [
    # 1. numbers in flags: one rule, checked before any work, exit 2
    Case(
        "memoize --max-tokens 10**20",
        "fork",
        memoize_with("--max-tokens", BIG),
        rf"argument --max-tokens: must be in 1\.\.2147483647, got {BIG} \(see ensdist-memoize --help\)",
        2,
    ),
    Case(
        "evaluate --batch-size 10**20",
        "fork",
        evaluate_with("--batch-size", BIG),
        rf"argument --batch-size: must be in 1\.\.2147483647, got {BIG} \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "uncertainty --max-tokens 10**20",
        "fork",
        uncertainty_with("--max-tokens", BIG),
        rf"argument --max-tokens: must be in 1\.\.2147483647, got {BIG} \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "evaluate --lenpen nan",
        "fork",
        evaluate_with("--lenpen", "nan"),
        r"argument --lenpen: must be a number, got nan \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "uncertainty --lenpen nan",
        "fork",
        uncertainty_with("--lenpen", "nan"),
        r"argument --lenpen: must be a number, got nan \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "evaluate --lenpen 1e300 (the length power overflows)",
        "fork",
        evaluate_with("--lenpen", "1e300"),
        r"argument --lenpen: must be in \[-10, 10\], got 1e300 \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "uncertainty --temperature 1e-320",
        "fork",
        uncertainty_with("--temperature", "1e-320"),
        r"argument --temperature: must be in \[0\.001, 1000\], got 1e-320 \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "evaluate --temperature nan",
        "fork",
        evaluate_with("--temperature", "nan"),
        r"argument --temperature: must be a number, got nan \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "evaluate --unkpen nan",
        "fork",
        evaluate_with("--unkpen", "nan"),
        r"argument --unkpen: must be a number, got nan \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "uncertainty --unkpen=-1e30",
        "fork",
        uncertainty_with("--unkpen=-1e30"),
        r"argument --unkpen: must be in \[-1000, 1000\], got -1e30 \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "evaluate --max-len-a inf",
        "fork",
        evaluate_with("--max-len-a", "inf"),
        r"argument --max-len-a: must be finite, got inf \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "evaluate --max-len-b 0",
        "fork",
        evaluate_with("--max-len-b", "0"),
        r"argument --max-len-b: must be in 1\.\.2147483647, got 0 \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "evaluate --min-len 1000",
        "fork",
        evaluate_with("--min-len", "1000"),
        r"--min-len 1000 is longer than the longest output of a one-token source "
        r"\(--max-len-b 200\) \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "uncertainty --min-len 20 --max-len-a 2 (a short source cannot reach it)",
        "fork",
        uncertainty_with("--min-len", "20", "--max-len-a", "2"),
        r"--min-len 20 is longer than the longest output of a one-token source "
        r"\(--max-len-b 10\) \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "uncertainty --min-len beyond the model's positions (refused before decoding)",
        "fork",
        uncertainty_with("--min-len", "5000", "--max-len-b", "6000"),
        r"--min-len 5000: longer than the \d+ tokens the model\(s\) can output",
        1,
        _no_set_files(
            lambda f: str(f.root / f"unc-{abs(hash(('--min-len', '5000', '--max-len-b', '6000')))}")
        ),
    ),
    Case(
        "uncertainty --weight-temperature 0",
        "fork",
        uncertainty_with("--weight-temperature", "0"),
        r"argument --weight-temperature: must be in \[0\.001, 1000\], got 0 \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "uncertainty --limit 0",
        "fork",
        uncertainty_with("--limit", "0"),
        r"argument --limit: must be in 1\.\.2147483647, got 0 \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "uncertainty --beam 1.5",
        "fork",
        uncertainty_with("--beam", "1.5"),
        r"argument --beam: expected an integer, got '1\.5' \(see ensdist-uncertainty --help\)",
        2,
    ),
    Case(
        "evaluate --num-bins 0",
        "fork",
        evaluate_with("--num-bins", "0"),
        r"argument --num-bins: must be in 1\.\.2147483647, got 0 \(see ensdist-evaluate --help\)",
        2,
    ),
    Case(
        "bleu-table --beam 0",
        "fork",
        lambda f: (
            BLEU,
            [
                "ensdist-bleu-table",
                f.data,
                "--path",
                f.ckpts[0],
                "--output-json",
                str(f.root / "b.json"),
                "--output-md",
                str(f.root / "b.md"),
                "--beam",
                "0",
            ],
        ),
        r"argument --beam: must be in 1\.\.1000, got 0 \(see ensdist-bleu-table --help\)",
        2,
    ),
    Case(
        "swa --epochs 10**20",
        "fork",
        _swa("--epochs", BIG, output="checkpoint_swa.pt"),
        rf"argument --epochs: must be in 1\.\.2147483647, got {BIG} \(see ensdist-swa --help\)",
        2,
    ),
    Case(
        "sentencepiece --clean-ratio nan",
        "fork",
        lambda f: (
            SPM,
            [
                "spm",
                "--raw",
                f.raw,
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "25",
                "--out",
                str(f.root / "spm_nan"),
                "--clean-ratio",
                "nan",
            ],
        ),
        r"argument --clean-ratio: must be a number, got nan \(see .* --help\)",
        2,
    ),
    Case(
        "sentencepiece --vocab-size 99999999999999999999",
        "fork",
        lambda f: (
            SPM,
            [
                "spm",
                "--raw",
                f.raw,
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "99999999999999999999",
                "--out",
                str(f.root / "spm_big"),
            ],
        ),
        r"argument --vocab-size: must be in 1\.\.\d+, got 99999999999999999999 \(see .* --help\)",
        2,
    ),
    Case(
        "corpus-ding --max-heldout-fraction 1",
        "fork",
        lambda f: (
            DING,
            [
                "ding",
                "--source",
                _bad_ding(f),
                "--out",
                str(f.root / "d1"),
                "--max-heldout-fraction",
                "1",
            ],
        ),
        r"argument --max-heldout-fraction: must be in \(0, 1\), got 1 \(see .* --help\)",
        2,
    ),
    # 2. results that belong together
    Case(
        "report: a complete results directory (valid input)",
        "fork",
        results_variant("good", lambda d: None),
        _report_ok,
    ),
    Case(
        "uncertainty: an --ood file with a lone \\r (one record per \\n-line)",
        "fork",
        uncertainty_with(
            "--ood",
            lambda f: f"mine={_ood_text(f)}",
            "--spm-model",
            _tiny_spm,
            out=lambda f: str(f.root / "unc_cr"),
        ),
        _lone_cr_ok,
    ),
    Case(
        "uncertainty while another run writes the same --out",
        "fork",
        _locked_uncertainty,
        r"--out .*/unc_locked: another run is writing here \(it holds .*/unc_locked/\.ensdist-uncertainty\.lock\)",
        1,
        _no_set_files(lambda f: str(f.root / "unc_locked")),
    ),
    Case(
        "report after a rerun with other options was killed half way (the finished result stays)",
        "fork",
        _killed_rerun,
        _killed_rerun_ok,
    ),
    Case(
        "report: an OOD set file cut to 3 of its 6 records",
        "fork",
        results_variant("cut", _cut_ood),
        r".*/uncertainty/a/mine\.jsonl: 3 records, but .*/a/system\.json says 6 \(cut, or left by another run\)",
        1,
    ),
    Case(
        "report: a set file written by another run (same count)",
        "fork",
        results_variant("other_run", _other_runs_file),
        r".*/a/test\.jsonl: not the file .*/a/system\.json describes \(sha256 differs: .*\)",
        1,
    ),
    Case(
        "report: systems decoded with different beams",
        "fork",
        results_variant("beams", _second_system(_beam_1)),
        r".*/b/system\.json: beam 1 differs from .*/a/system\.json's 2 \(one table compares systems measured alike\)",
        1,
    ),
    Case(
        "report: systems scored with different --limit",
        "fork",
        results_variant("limits", _second_system(_limit_4)),
        r".*/b/system\.json: limit 4 differs from .*/a/system\.json's 8 \(one table .*\)",
        1,
    ),
    Case(
        "report: a measure NaN in a set file (no AUC is made from it)",
        "fork",
        results_variant("nan_measure", _nan_measure),
        r".*/a/test\.jsonl: line 1: NaN is not a number JSON allows",
        1,
    ),
    Case(
        "report: set files without system.json (an interrupted run)",
        "fork",
        results_variant("no_system", _no_system_json),
        r".*/uncertainty/a: set files without system\.json \(an interrupted ensdist-uncertainty run: rerun it\)",
        1,
    ),
    Case(
        "report: BLEU of systems decoded with different beams",
        "fork",
        results_variant("bleu_beams", _decoded_differently),
        r".*/m2\.json: decoded with generation .*'beam': 1.*, .*/m1\.json with .*'beam': 5.*: their BLEU is not comparable",
        1,
    ),
    # 3. nothing a user wrote is lost
    Case(
        "evaluate --output is the checkpoint it reads",
        "fork",
        lambda f: evaluate_with(paths=lambda g: _victim(g), output=lambda g: _victim(g))(f),
        r"--output .*/victim\.pt: is the input --path .*/victim\.pt; refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "victim.pt")),
    ),
    Case(
        "evaluate --output is a hard link to the checkpoint",
        "fork",
        lambda f: evaluate_with(paths=lambda g: _victim(g), output=_linked)(f),
        r"--output .*/linked\.pt: is the input --path .*/victim\.pt; refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "victim.pt")),
    ),
    Case(
        "bleu-table --output-json and --output-md one file",
        "fork",
        lambda f: (
            BLEU,
            [
                "ensdist-bleu-table",
                f.data,
                "--path",
                f.ckpts[0],
                "--output-json",
                str(f.root / "same"),
                "--output-md",
                str(f.root / "same"),
            ],
        ),
        r"--output-json and --output-md are the same file: .*/same \(see ensdist-bleu-table --help\)",
        2,
    ),
    Case(
        "bleu-table --output-md is the checkpoint",
        "fork",
        lambda f: (
            BLEU,
            [
                "ensdist-bleu-table",
                f.data,
                "--path",
                _victim(f),
                "--output-json",
                str(f.root / "bt.json"),
                "--output-md",
                _victim(f),
            ],
        ),
        r"--output-md .*/victim\.pt: is the input --path .*/victim\.pt; refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "victim.pt")),
    ),
    Case(
        "swa --output an epoch checkpoint with --remove-snapshots",
        "fork",
        _swa("--epochs", "2", "--end-epoch", "2", "--remove-snapshots", output="checkpoint9.pt"),
        r"--output .*/checkpoint9\.pt: an epoch checkpoint of --save-dir, which --remove-snapshots would delete",
        1,
        _swa_untouched,
    ),
    Case(
        "swa --output a snapshot of its own window",
        "fork",
        _swa("--epochs", "2", "--end-epoch", "2", output="checkpoint1.pt"),
        r"--output .*/checkpoint1\.pt: is the input --save-dir .*/checkpoint1\.pt; refusing to write over it",
        1,
        _swa_untouched,
    ),
    Case(
        "swa --output checkpoint_last.pt (fairseq-train's resume point)",
        "fork",
        _swa("--epochs", "2", "--end-epoch", "2", output="checkpoint_last.pt"),
        r"--output .*/checkpoint_last\.pt: is the input --save-dir .*/checkpoint_last\.pt; refusing to write over it",
        1,
        _swa_untouched,
    ),
    Case(
        "uncertainty: a directory where system.json goes (refused before any work)",
        "fork",
        uncertainty_with(out=_system_dir_in_the_way),
        r"--out .*/unc_dir_in_way/system\.json: is a directory",
        1,
        _no_set_files(lambda f: str(f.root / "unc_dir_in_way")),
    ),
    Case(
        "uncertainty --out is a file",
        "fork",
        uncertainty_with(out=_a_file),
        r"--out .*/unc_is_a_file: exists and is not a directory",
        1,
    ),
    Case(
        "uncertainty: the final write fails (the result is kept and named)",
        "fork",
        uncertainty_with(out=lambda f: str(f.root / "unc_full"), entry=_uncertainty_disk_full),
        r"--out .*/unc_full/system\.json: cannot write \(No space left on device\); "
        r"it was saved to .*/unc_full-kept/system-\w+\.json",
        1,
        _kept_result_ok,
    ),
    Case(
        "uncertainty --ood file is where a set file goes",
        "fork",
        _ood_inside_out,
        r"--out .*/unc_ood_inside/mine\.jsonl: is the input --ood .*/mine\.jsonl; refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "unc_ood_inside" / "mine.jsonl"), "ood_inside_sha"),
    ),
    Case(
        "report: a FIFO in the results directory (no hang)",
        "fork",
        results_variant("fifo", _fifo),
        r".*/results_fifo/fifo\.json: not a regular file",
        1,
    ),
    Case(
        "sentencepiece --out is --raw",
        "fork",
        _spm_over_raw,
        r"--out .*/raw_spm_over/train\.en: is the input --raw .*/train\.en; refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "raw_spm_over" / "train.en"), "raw_before"),
    ),
    Case(
        "learning-curves --output-md is the log it reads",
        "fork",
        _curves_over_log,
        r"--output-md .*/train\.log: is the input --run .*/train\.log; refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "train.log"), "log_sha"),
    ),
    # 4. damaged inputs name themselves
    Case(
        "report: a system.json without its sets",
        "fork",
        results_variant("no_sets", _no_sets),
        r".*/a/system\.json: not a complete ensdist-uncertainty system \(missing sets; .*\)",
        1,
    ),
    Case(
        "report: a truncated system.json",
        "fork",
        results_variant("truncated", _truncated_system),
        r".*/a/system\.json: not valid JSON \(.*, line \d+\)",
        1,
    ),
    Case(
        "report: NaN in a result JSON",
        "fork",
        results_variant("nan", _nan_result),
        r".*/results_nan/m1\.json: NaN is not a number JSON allows",
        1,
    ),
    Case(
        "uncertainty: a truncated ood_sets.json",
        "fork",
        _ood_dir("truncated", lambda sha: '{"src": "en", "dict_sha256": "' + sha[:10]),
        r".*/ood_truncated/ood_sets\.json: not valid JSON \(.*, line 1\)",
        1,
    ),
    Case(
        "uncertainty: an OOD manifest without its dict_sha256",
        "fork",
        _ood_dir("no_sha", lambda sha: json.dumps({"src": "en", "sets": []})),
        r".*/ood_no_sha/ood_sets\.json: not an ensdist-ood-sets manifest \(missing dict_sha256\)",
        1,
    ),
    Case(
        "uncertainty: an OOD set whose .idx holds another count",
        "fork",
        _ood_dir(
            "count",
            lambda sha: json.dumps(
                {
                    "src": "en",
                    "dict_sha256": sha,
                    "sets": [{"name": "x", "lines": 41, "bin": "bin/x.en"}],
                }
            ),
        ),
        r".*/ood_count/bin/x\.en\.idx: 40 sentences, but .*/ood_sets\.json says set 'x' has 41",
        1,
    ),
    Case(
        "uncertainty: an --ood file with invalid UTF-8",
        "fork",
        uncertainty_with(
            "--ood",
            lambda f: "bad=" + _bad_utf8_file("bad_ood.txt", b"s1 s2\ns3 \xff s4\n")(f),
            "--spm-model",
            _tiny_spm,
        ),
        r".*/bad_ood\.txt: line 2: invalid UTF-8 \(byte 0xff at column 4\)",
        1,
    ),
    Case(
        "evaluate --reference with an invalid UTF-8 byte (before any work)",
        "fork",
        lambda f: evaluate_with(
            "--reference", _bad_utf8_file("bad_ref.txt", b"t1 t2\n\xfft3\n")(f)
        )(f),
        r".*/bad_ref\.txt: line 2: invalid UTF-8 \(byte 0xff at column 1\)",
        1,
    ),
]


def _data_variant(name, edit):
    def make(f):
        d = str(f.root / f"data_{name}")
        if not os.path.exists(d):
            shutil.copytree(f.data, d)
            edit(d)
        return d

    return make


def evaluate_on(data):
    def build(f):
        argv = evaluate_with()(f)[1]
        argv[1] = data(f)
        return EVALUATE, argv

    return build


def _dict_line_without_count(d):
    p = os.path.join(d, "dict.de.txt")
    lines = open(p, encoding="utf-8").read().split("\n")
    lines[4] = lines[4].split(" ")[0]
    open(p, "w", encoding="utf-8").write("\n".join(lines))


def _dict_token_twice(d):
    p = os.path.join(d, "dict.en.txt")
    lines = open(p, encoding="utf-8").read().split("\n")
    lines[6] = lines[2]
    open(p, "w", encoding="utf-8").write("\n".join(lines))


def _truncate(name, by):
    def edit(d):
        p = os.path.join(d, name)
        data = open(p, "rb").read()
        open(p, "wb").write(data[:-by])

    return edit


def _one_target_short(d):
    """test.en-de.de with one sentence fewer than test.en-de.en (a binarization of other text)."""
    from fairseq.data import indexed_dataset

    prefix = os.path.join(d, "test.en-de.de")
    ds = indexed_dataset.MMapIndexedDataset(prefix)
    items = [ds[i] for i in range(len(ds) - 1)]
    del ds
    builder = indexed_dataset.make_builder(prefix + ".bin.new", impl="mmap", vocab_size=1000)
    for t in items:
        builder.add_item(t)
    builder.finalize(prefix + ".idx.new")
    os.replace(prefix + ".bin.new", prefix + ".bin")
    os.replace(prefix + ".idx.new", prefix + ".idx")


def _ood_sets_over_corpus(f):
    d = str(f.root / "corpus_for_ood")
    if not os.path.exists(d):
        shutil.copytree(f.raw, os.path.join(d, "raw"))
    f.corpus_test_sha = _sha(os.path.join(d, "raw", "test.en"))
    mine = _ood_text(f)
    return _cli_entry("ood_sets"), ["ood", "--data-dir", d, "--out", d, "--extra", f"test={mine}"]


def _output_over_dictionary(f):
    d = _data_variant("victim_dict", lambda d: None)(f)
    f.dict_sha = _sha(os.path.join(d, "dict.en.txt"))
    argv = evaluate_with(output=lambda g: os.path.join(d, "dict.en.txt"))(f)[1]
    argv[1] = d
    return EVALUATE, argv


DATA_CASES = [
    Case(
        "evaluate --output is a dictionary of the data it reads",
        "fork",
        _output_over_dictionary,
        r"--output .*/data_victim_dict/dict\.en\.txt: is the input DATA .*/dict\.en\.txt; "
        r"refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "data_victim_dict" / "dict.en.txt"), "dict_sha"),
    ),
    Case(
        "ood-sets --out is --data-dir with a set named like a corpus split",
        "fork",
        _ood_sets_over_corpus,
        r"--out .*/corpus_for_ood/raw/test\.\w+: is the input --data-dir .*/raw/test\.\w+; "
        r"refusing to write over it",
        1,
        _untouched(lambda f: str(f.root / "corpus_for_ood" / "raw" / "test.en"), "corpus_test_sha"),
    ),
    Case(
        "evaluate: a dictionary line without its count",
        "fork",
        evaluate_on(_data_variant("dict_no_count", _dict_line_without_count)),
        r".*/data_dict_no_count/dict\.de\.txt: line 5: expected '<token> <count>', got '\S+'",
        1,
    ),
    Case(
        "evaluate: a dictionary with a token twice",
        "fork",
        evaluate_on(_data_variant("dict_twice", _dict_token_twice)),
        r".*/data_dict_twice/dict\.en\.txt: line 7: token '\S+' already on line 3",
        1,
    ),
    Case(
        "evaluate: a truncated .idx",
        "fork",
        evaluate_on(_data_variant("short_idx", _truncate("test.en-de.en.idx", 4))),
        r".*/data_short_idx/test\.en-de\.en\.idx: \d+ bytes, its header \(40 sentences\) needs \d+ "
        r"\(truncated\?\)",
        1,
    ),
    Case(
        "evaluate: a truncated .bin",
        "fork",
        evaluate_on(_data_variant("short_bin", _truncate("test.en-de.de.bin", 6))),
        r".*/data_short_bin/test\.en-de\.de\.bin: \d+ bytes, .*/test\.en-de\.de\.idx says \d+ "
        r"\(truncated, or of another binarization\)",
        1,
    ),
    Case(
        "uncertainty: a split with 40 source and 39 target sentences",
        "fork",
        lambda f: (
            UNCERTAINTY,
            [
                a if a != f.data else _data_variant("uneven", _one_target_short)(f)
                for a in uncertainty_args(f, str(f.root / "unc_uneven"))
            ],
        ),
        r".*/data_uneven/test\.en-de\.en\.idx: 40 sentences, but .*/test\.en-de\.de\.idx has 39",
        1,
    ),
]

ALL_CASES = CASES + EVALUATOR_CASES + COMMAND_CASES + DATA_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_bad_input(case, fx):
    built = case.command(fx)
    entry, argv, cwd = (built + (None,))[:3]
    if case.runner == "cli":
        code, stderr = run_cli(argv, cwd=cwd)
    else:
        code, stderr = run_forked(entry, argv, cwd=cwd)
    assert "Traceback" not in stderr, stderr[-3000:]
    if callable(case.expected):
        assert code == 0, stderr[-3000:]
        case.expected(fx)
        return
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(PROGRESS)]
    assert code != 0 and len(lines) == 1, f"exit {code}, stderr:\n{stderr[-3000:]}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.fullmatch(case.expected, lines[0][len("error: ") :]), lines[0]
    if case.code is not None:
        assert code == case.code, f"exit {code}, expected {case.code}: {lines[0]}"
    if case.after is not None:
        case.after(fx)

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
import hashlib
import io
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
#   a regex for the one error line (after "error: "), or a callable fx -> None checking a result.
Case = collections.namedtuple("Case", "name runner command expected")


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

ALL_CASES = CASES + EVALUATOR_CASES


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

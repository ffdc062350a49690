"""--task translation_distill: teacher entries aligned to fairseq's batches; provenance refused.

The stores here are synthetic and encode what they belong to: row t of sentence i has index
column 0 = the t-th target token, column 1 = i mod V, and precision i + 1 + t/8. A batch is aligned
when those codes match the batch's own target and ids."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.data import LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import ensdist_fairseq
import ensdist_fairseq.tasks.translation_distill  # noqa: F401  (registers the task)
from ensdist_fairseq.store import format as store_format
from ensdist_fairseq.store.provenance import Provenance, StoreError

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

BIN = os.path.dirname(sys.executable)
TOPK = 8


def make_task(data, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [data, "--task", "translation_distill", "--arch", "transformer", *extra]
    )
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def target_sentences(data, split="train"):
    plain = make_task(data)
    plain.load_dataset(split)
    ds = plain.dataset(split)
    return (
        [ds.tgt[i].numpy() for i in range(len(ds))],
        [ds.src[i].numpy() for i in range(len(ds))],
        len(plain.tgt_dict),
    )


def sha256_tokens(sentences):
    return hashlib.sha256(b"".join(s.astype("<i4").tobytes() for s in sentences)).hexdigest()


def write_coded_store(path, data, **override):
    tgt, src, vocab_size = target_sentences(data)
    lengths = override.pop("lengths", [len(t) for t in tgt])
    fields = dict(
        vocab_size=vocab_size,
        topk=TOPK,
        num_teachers=3,
        teacher_sha256=("0" * 64,) * 3,
        dictionary_sha256=hashlib.sha256(
            open(os.path.join(data, "dict.de.txt"), "rb").read()
        ).hexdigest(),
        split="train",
        num_sentences=len(lengths),
        target_checksum=sha256_tokens(tgt),
        source_checksum=sha256_tokens(src),
        package_version="test",
    )
    fields.update(override)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    writer = store_format.RowWriter(
        path, store_format.create(path, offsets, Provenance(**fields)), offsets
    )
    for i, n in enumerate(lengths):
        indices = np.zeros((n, TOPK), dtype=np.int64)
        indices[:, 0] = tgt[i][:n] if n <= len(tgt[i]) else np.resize(tgt[i], n)
        indices[:, 1] = i % vocab_size
        probs = np.tile(np.arange(TOPK, 0, -1) / 64, (n, 1))
        writer.write_sentence(i, indices, probs, i + 1 + np.arange(n) / 8)
    writer.close()
    return path


@pytest.fixture(scope="module")
def coded_store(tiny_data, tmp_path_factory):
    return write_coded_store(str(tmp_path_factory.mktemp("task") / "coded.h5"), tiny_data)


@pytest.mark.parametrize(
    "extra, num_workers",
    [
        (["--required-seq-len-multiple", "8"], 0),  # padding beyond the longest target
        (["--left-pad-target"], 2),  # pads on the other side; entries read in worker processes
    ],
)
def test_entries_follow_shuffled_padded_batches(coded_store, tiny_data, extra, num_workers):
    task = make_task(tiny_data, "--teacher-store", coded_store, "--teacher-topk", "4", *extra)
    task.load_dataset("train")
    pad, vocab = task.tgt_dict.pad(), len(task.tgt_dict)
    itr = task.get_batch_iterator(
        task.dataset("train"),
        max_tokens=100,
        seed=7,
        num_workers=num_workers,
        required_batch_size_multiple=1,
    ).next_epoch_itr(shuffle=True)
    seen = []
    for batch in itr:
        target, teacher = batch["target"], batch["teacher"]
        assert (
            teacher["indices"].shape == target.shape + (4,)
            and teacher["precision"].shape == target.shape
        )
        mask = target.ne(pad)
        assert torch.equal(teacher["indices"][..., 0][mask], target[mask])
        for b, sid in enumerate(batch["id"].tolist()):
            assert torch.all(teacher["indices"][b, mask[b], 1] == sid % vocab)
            expected = sid + 1 + torch.arange(int(mask[b].sum()), dtype=torch.float64) / 8
            torch.testing.assert_close(
                teacher["precision"][b, mask[b]], expected
            )  # float64: never narrowed
        # float16, the store's own dtype (fairseq's --fp16/--bf16 sample conversion leaves it alone)
        torch.testing.assert_close(
            teacher["probs"][mask],
            torch.tensor([8, 7, 6, 5.0], dtype=torch.float16).div(64).expand(int(mask.sum()), 4),
        )
        assert not teacher["probs"][~mask].any() and not teacher["precision"][~mask].any()
        assert not teacher["indices"][~mask].any()
        seen += batch["id"].tolist()
    # every sentence (required_batch_size_multiple=1: fairseq 0.12 drops a short last batch otherwise)
    assert sorted(seen) == list(range(300)) and seen != sorted(seen)


def test_valid_split_and_no_store_are_plain_translation(coded_store, tiny_data):
    task = make_task(tiny_data, "--teacher-store", coded_store)
    task.load_dataset("valid")
    assert type(task.dataset("valid")) is LanguagePairDataset
    plain = make_task(tiny_data)
    plain.load_dataset("train")
    assert type(plain.dataset("train")) is LanguagePairDataset


@pytest.mark.parametrize(
    "override, message",
    [
        (
            dict(dictionary_sha256="1" * 64),
            "dictionary sha256 differs: store 111111111111…, expected ",
        ),
        (dict(vocab_size=1000), "vocabulary size differs: store 1000, expected "),
        (dict(split="valid"), "split differs: store 'valid', expected 'train'"),
        (
            dict(lengths=[5] * 299, num_sentences=299),
            "number of sentences differs: store 299, expected 300",
        ),
        (dict(target_checksum="2" * 64), "target token checksum differs"),
        (dict(source_checksum="3" * 64), "source token checksum differs"),
    ],
)
def test_mismatching_store_is_refused(override, message, tiny_data, tmp_path):
    store = write_coded_store(str(tmp_path / "bad.h5"), tiny_data, **override)
    task = make_task(tiny_data, "--teacher-store", store)
    with pytest.raises(StoreError, match=message):
        task.load_dataset("train")


def test_wrong_sentence_lengths_are_refused(tiny_data, tmp_path):
    tgt, _, _ = target_sentences(tiny_data)
    lengths = [len(t) for t in tgt]
    lengths[5] += 1
    store = write_coded_store(str(tmp_path / "len.h5"), tiny_data, lengths=lengths)
    with pytest.raises(
        StoreError,
        match=f"sentence 5 has {lengths[5]} rows, its target has {lengths[5] - 1} tokens",
    ):
        make_task(tiny_data, "--teacher-store", store).load_dataset("train")


def test_topk_larger_than_stored_and_broken_files_are_refused(coded_store, tiny_data, tmp_path):
    with pytest.raises(StoreError, match=r"--teacher-topk 9: must be in 1..8 .* holds V'=8"):
        make_task(tiny_data, "--teacher-store", coded_store, "--teacher-topk", "9").load_dataset(
            "train"
        )
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(open(coded_store, "rb").read()[:-100])
    with pytest.raises(StoreError, match="truncated.h5"):
        make_task(tiny_data, "--teacher-store", str(truncated)).load_dataset("train")


def test_fairseq_train_streams_the_store(coded_store, tiny_data, tmp_path):
    from tiny_fairseq import TINY_ARCH_ARGS

    user_dir = os.path.dirname(ensdist_fairseq.__file__)
    common = [
        os.path.join(BIN, "fairseq-train"),
        tiny_data,
        "--user-dir",
        user_dir,
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
        "3",
        "--no-save",
        "--criterion",
        "cross_entropy",
        "--teacher-store",
        coded_store,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ok = subprocess.run(
        common + ["--num-workers", "2"], capture_output=True, text=True, env=env, timeout=300
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "provenance checked" in ok.stdout + ok.stderr
    bad = subprocess.run(
        common + ["--teacher-topk", "99"], capture_output=True, text=True, env=env, timeout=300
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --teacher-topk 99")


def test_a_split_loaded_for_a_saved_model_does_not_open_the_store(tiny_data, tmp_path):
    # fairseq-validate / fairseq-generate pass the checkpoint's task_cfg; its --teacher-store may
    # be relative to another directory, and validation needs no teacher
    task = make_task(tiny_data, "--teacher-store", str(tmp_path / "elsewhere" / "store.h5"))
    task.load_dataset("train", task_cfg=task.cfg)
    assert type(task.dataset("train")) is LanguagePairDataset
    with pytest.raises(StoreError, match="store.h5"):
        task.load_dataset("train")  # training opens it


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--teacher-topk", "0"], "--teacher-topk: must be in 1.."),
        (["--max-target-positions", "0"], "--max-target-positions: must be in 1.."),
    ],
)
def test_numeric_task_fields_follow_the_shared_rule(flags, message, tiny_data):
    from ensdist_fairseq.errors import EnsdistError

    with pytest.raises(EnsdistError, match="^" + message):
        make_task(tiny_data, *flags)

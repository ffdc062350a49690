"""fairseq glue of `ensdist-memoize`: run the teacher ensemble over a split and write the store.

The math is in teacher_distribution.py (EnsembleMean), the teacher-forced pass and its batching
in teacher_forcing.py, the file format in store/; this module cuts the split into chunks
(store/shards.py), shares the chunks among torch.distributed ranks, and turns the members'
outputs into store rows. One writer per store: rank 0 holds `<output>.lock` from before any
work until the store is in place.
"""

import dataclasses
import datetime
import os
import shutil
import signal
import sys
import time
from typing import List, Optional

import numpy as np
import torch

from ensdist_fairseq import __version__
from ensdist_fairseq.checkpoints.checks import check_ensemble
from ensdist_fairseq.data.split_fingerprint import fingerprint
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.hashing import file_sha256
from ensdist_fairseq.store import format as store_format
from ensdist_fairseq.store import shards
from ensdist_fairseq.store.provenance import FORMAT_VERSION, Provenance, StoreError, check_topk
from ensdist_fairseq.store.teacher_distribution import (
    EnsembleMean,
    NonFiniteMemberOutput,
    nucleus_lengths,
    truncate_to_nucleus,
)
from ensdist_fairseq.teachers import teacher_forcing

# Rows copied per read/write while stitching: 1M rows of V'=64 is 256 MB at most per dataset
# read, large enough for sequential disk speed, small enough to keep memory flat.
STITCH_BLOCK_ROWS = 1 << 20
# Ranks wait for each other only at the end, after their whole share of the split: the
# collective timeout must exceed the longest share, not the usual seconds of a training step.
COLLECTIVE_TIMEOUT = datetime.timedelta(days=7)
# Tests only: "chunk-started:N" / "stitch-started" SIGKILLs this process at that point, so a
# killed run is reproduced exactly (no timing race).
_KILL_AT = "ENSDIST_TEST_KILL_AT"
# Teachers whose teacher-forced accuracy is below a constant guess's (always the most frequent
# target token) are refused; within this margin above it, memoize warns. A teacher worth
# distilling is far above it; teachers of other data or of other token ids are at or below it
# (an undertrained teacher that always predicts </s> ties it exactly: warned, not refused).
ACCURACY_MARGIN = 0.05


@dataclasses.dataclass
class MemoizeConfig:
    data: str
    paths: List[str]
    output: str
    split: str
    topk: int
    max_tokens: Optional[int]
    batch_size: Optional[int]
    chunk_sentences: int
    cpu: bool
    log_interval: float  # seconds between progress lines
    top_p: float = 1.0  # nucleus rows: smallest prefix of the top-V' reaching this mass
    min_k: int = 1  # ... of at least this many entries
    # Loading the teachers (fairseq's --model-overrides / --user-dir, a half-precision GPU pass)
    # and checking they belong to the data (their dictionaries, their accuracy on the split).
    model_overrides: dict = dataclasses.field(default_factory=dict)
    precision: Optional[str] = None  # "fp16" / "bf16": the teachers' forward pass on the GPU
    teacher_dicts: List[str] = dataclasses.field(default_factory=list)
    accuracy_sentences: int = 1000
    allow_low_accuracy: bool = False
    store_format: int = FORMAT_VERSION  # 4: table-coded rows (smallest); 3: faster to read


def _test_kill(point: str) -> None:
    if os.environ.get(_KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)


class Run:
    """The ensemble, the split and this process's share of the work."""

    def __init__(self, cfg: MemoizeConfig, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        check_topk(cfg.min_k, cfg.topk, "--min-k", "at most --topk")
        check_ensemble(cfg.paths, cfg.data, cfg.teacher_dicts)
        use_cuda = torch.cuda.is_available() and not cfg.cpu
        self.device = torch.device(
            f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu"
        )
        if cfg.precision and self.device.type != "cuda":
            raise EnsdistError(f"--{cfg.precision}: needs a GPU (CUDA is not available or --cpu)")
        self.models, task = teacher_forcing.load_models(
            cfg.paths,
            cfg.data,
            self.device,
            overrides=cfg.model_overrides,
            dtype=teacher_forcing.HALF_DTYPES.get(cfg.precision),
        )
        empty = _empty_split_file(cfg.data, cfg.split, task.cfg.source_lang, task.cfg.target_lang)
        if empty is not None:  # fairseq's mmap reader fails on it and then again in __del__
            raise EnsdistError(
                f"--split {cfg.split}: the split in {cfg.data} has no sentences ({empty} is empty)"
            )
        try:
            # combine=True: the same (train, train1, ...) concatenation and indices as fairseq-train
            task.load_dataset(cfg.split, combine=True)
        except FileNotFoundError:
            raise EnsdistError(f"--split {cfg.split}: no such split in {cfg.data}") from None
        except (
            ValueError
        ) as e:  # fairseq cannot even open an empty binarized split (mmap of 0 bytes)
            raise EnsdistError(
                f"--split {cfg.split}: the split in {cfg.data} has no sentences ({e})"
            ) from None
        self.task, self.dataset = task, task.dataset(cfg.split)
        if len(self.dataset) == 0:
            raise EnsdistError(f"--split {cfg.split}: the split in {cfg.data} has no sentences")
        self.pad = task.target_dictionary.pad()
        vocab_size = len(task.target_dictionary)
        check_topk(cfg.topk, vocab_size, "--topk", "the target vocabulary size")
        try:
            teacher_forcing.check_sizes(
                self.dataset,
                teacher_forcing.max_positions(task, self.models),
                cfg.max_tokens,
                f"split '{cfg.split}' of {cfg.data}",
            )
        except ValueError as e:  # bad input by design (an EnsdistError in newer teacher_forcing)
            raise EnsdistError(str(e)) from None
        self.accuracy = self.check_accuracy()
        fp = fingerprint(self.dataset)
        self.offsets = np.concatenate([[0], np.cumsum(fp.target_lengths)]).astype(np.int64)
        self.provenance = Provenance(
            vocab_size=vocab_size,
            topk=cfg.topk,
            num_teachers=len(cfg.paths),
            teacher_sha256=tuple(file_sha256(p) for p in cfg.paths),
            dictionary_sha256=file_sha256(
                os.path.join(cfg.data, f"dict.{task.cfg.target_lang}.txt")
            ),
            split=cfg.split,
            num_sentences=len(self.dataset),
            target_checksum=fp.target_checksum,
            source_checksum=fp.source_checksum,
            package_version=__version__,
            top_p=cfg.top_p,
            min_k=cfg.min_k,
            teacher_accuracy=self.accuracy,
            format_version=cfg.store_format,
        )
        self.chunks = shards.plan_chunks(len(self.dataset), cfg.chunk_sentences)

    def check_accuracy(self) -> Optional[float]:
        """The ensemble's teacher-forced accuracy on the split's first sentences; EnsdistError
        when it is no better than always guessing the most frequent target token there (teachers
        of other data, or a dictionary whose lines differ from theirs)."""
        n = min(self.cfg.accuracy_sentences, len(self.dataset))
        batches = teacher_forcing.plan_batches(
            self.dataset, np.arange(n), self.cfg.max_tokens, self.cfg.batch_size
        )
        with torch.inference_mode():
            acc = teacher_forcing.accuracy(
                self.models, teacher_forcing.samples(self.dataset, batches, self.device), self.pad
            )
        if not acc.finite:  # memoize's own pass names the member and the position
            return None
        self.log(
            f"teacher-forced accuracy on the first {n} sentences of '{self.cfg.split}': "
            f"{100 * acc.accuracy:.2f}% (most frequent target token: {100 * acc.unigram:.2f}%)"
        )
        if acc.accuracy < acc.unigram and not self.cfg.allow_low_accuracy:
            raise EnsdistError(
                f"--path: the teachers' accuracy on '{self.cfg.split}' of {self.cfg.data} is "
                f"{100 * acc.accuracy:.2f}%, below the {100 * acc.unigram:.2f}% of always guessing "
                "its most frequent token: teachers of other data or another dictionary? "
                "(--allow-low-accuracy to store them anyway)"
            )
        if acc.accuracy < acc.unigram + ACCURACY_MARGIN:
            self.log(
                f"warning: the teachers are hardly better than always guessing the most frequent "
                f"token ({100 * acc.accuracy:.2f}% vs {100 * acc.unigram:.2f}%): undertrained, "
                "or trained on other data?"
            )
        return acc.accuracy

    def log(self, msg: str):
        prefix = f"[rank {self.rank}/{self.world_size}] " if self.world_size > 1 else ""
        print(f"ensdist-memoize: {prefix}{msg}", file=sys.stderr, flush=True)

    def announce_size(self):
        n, rows = len(self.offsets) - 1, int(self.offsets[-1])
        nbytes = store_format.store_nbytes(n, rows, self.cfg.topk, self.provenance.vocab_size)
        per_entry = (
            store_format.index_dtype(self.provenance.vocab_size).itemsize
            + store_format.PROB_DTYPE.itemsize
        )
        self.log(
            f"{n} sentences, {rows} target tokens, V'={self.cfg.topk}, K={self.provenance.num_teachers}: "
            f"the store will take at most {_human(nbytes)} ({per_entry} bytes per entry before "
            "its rows are coded; coded they take less), twice that while its chunks "
            "are stitched"
        )
        out_dir = os.path.dirname(os.path.abspath(self.cfg.output))
        free = shutil.disk_usage(out_dir).free
        if free < 2 * nbytes:
            raise EnsdistError(
                f"--output {self.cfg.output}: {_human(free)} free in {out_dir}, need {_human(2 * nbytes)}"
            )

    @torch.inference_mode()
    def teacher_rows(self, sample):
        """[(sentence id, indices, probs, precision)] for one collated sample."""
        mask = sample["target"].ne(self.pad)
        mean = EnsembleMean()
        for path, lp in zip(
            self.cfg.paths, teacher_forcing.member_log_probs(self.models, sample["net_input"])
        ):
            try:
                mean.add(lp[mask])
            except NonFiniteMemberOutput as e:
                b, t = (int(x) for x in mask.nonzero()[e.row])
                raise EnsdistError(
                    f"{path}: non-finite output (log-probability {e.value}) at target token "
                    f"{int(mask[b, :t].sum())} of sentence {int(sample['id'][b])} of split '{self.cfg.split}'; "
                    "refusing to store it"
                ) from None
        indices, probs = mean.top_k(self.cfg.topk)
        if self.cfg.top_p < 1.0:
            lengths = nucleus_lengths(probs, self.cfg.top_p, self.cfg.min_k)
            indices, probs = truncate_to_nucleus(indices, probs, lengths)
        precision = mean.precision()
        lengths = mask.sum(1).tolist()
        indices, probs, precision = (
            indices.cpu().numpy(),
            probs.cpu().numpy(),
            precision.cpu().numpy(),
        )
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [
            (int(sid), indices[a:b], probs[a:b], precision[a:b])
            for sid, a, b in zip(sample["id"].tolist(), bounds[:-1], bounds[1:])
        ]

    def memoize_chunk(self, number, chunk, progress):
        final = shards.chunk_path(self.cfg.output, chunk)
        shards.remove_stale_temporaries(final)
        tmp = shards.temporary_path(final)
        local = self.offsets[chunk[0] : chunk[1] + 1] - self.offsets[chunk[0]]
        layout = store_format.create(tmp, local, self.provenance, first_sentence=chunk[0])
        _test_kill(f"chunk-started:{number}")
        writer = store_format.RowWriter(tmp, layout, local)
        written = np.zeros(chunk[1] - chunk[0], dtype=bool)
        try:
            self._fill_chunk(chunk, local, writer, written, progress)
            if not written.all():
                raise RuntimeError(
                    f"chunk {chunk}: {int((~written).sum())} sentences were not written"
                )
            writer.close()  # format 3: the chunk's coded rows are written (and fsynced) here
        except BaseException:
            writer.abandon()
            os.remove(tmp)  # a failed chunk leaves nothing behind (a killed one leaves a .tmp-PID)
            raise
        shards.commit(tmp, final)

    def _fill_chunk(self, chunk, local, writer, written, progress):
        batches = teacher_forcing.plan_batches(
            self.dataset, np.arange(*chunk), self.cfg.max_tokens, self.cfg.batch_size
        )
        for batch, sample in zip(
            batches, teacher_forcing.samples(self.dataset, batches, self.device)
        ):
            for sid, indices, probs, precision in self.teacher_rows(sample):
                if len(indices) != local[sid - chunk[0] + 1] - local[sid - chunk[0]]:
                    raise RuntimeError(
                        f"sentence {sid}: {len(indices)} target tokens in the batch, "
                        f"{self.offsets[sid + 1] - self.offsets[sid]} in the split's sizes"
                    )
                writer.write_sentence(sid - chunk[0], indices, probs, precision)
                written[sid - chunk[0]] = True
            progress(len(batch), int(sum(self.offsets[i + 1] - self.offsets[i] for i in batch)))


def _empty_split_file(data: str, split: str, src: str, tgt: str) -> Optional[str]:
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        for lang in (src, tgt):
            path = os.path.join(data, f"{split}.{pair}.{lang}.bin")
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                return path
    return None


def _human(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def _distributed_context():
    """(rank, world_size) from torchrun's environment; (0, 1) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _check_output(output: str) -> None:
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise EnsdistError(f"--output {output}: directory {out_dir} does not exist")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise EnsdistError(f"--output {output}: directory {out_dir} is not writable")
    if os.path.exists(output):
        raise EnsdistError(f"--output {output}: already exists (remove it to memoize again)")
    chunks = shards.shard_dir(output)
    if os.path.lexists(chunks) and not os.path.isdir(chunks):
        raise EnsdistError(
            f"--output {output}: {chunks} exists and is not a directory (ensdist-memoize keeps "
            "its chunks there): move it away or choose another --output"
        )


def memoize(cfg: MemoizeConfig) -> None:
    rank, world_size = _distributed_context()
    _check_output(cfg.output)
    lock = shards.OutputLock(cfg.output) if rank == 0 else None
    done, run = False, None
    try:
        _check_output(cfg.output)  # again under the lock: a run that just finished
        if rank == 0:
            shards.remove_stale_temporaries(cfg.output)  # a stitch killed midway
        run = Run(cfg, rank, world_size)  # validates every input before any process group exists
        done = _memoize_locked(run)
    finally:
        if lock is not None:
            # refused inputs leave nothing behind, not even the lock file
            lock.release(remove=done or run is None)


def _memoize_locked(run: "Run") -> bool:
    cfg, rank, world_size = run.cfg, run.rank, run.world_size
    if world_size > 1:
        import torch.distributed as dist

        backend = "nccl" if run.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    if rank == 0:
        run.announce_size()
    try:
        os.makedirs(shards.shard_dir(cfg.output), exist_ok=True)
        _memoize_share(run)
    except BaseException as e:
        if world_size > 1:
            run.log("failed; the other ranks will not stitch")
            _all_ok(False, run.device)
        if isinstance(e, OSError):  # disk full, permissions: what is complete stays complete
            where = f" on {e.filename}" if e.filename else ""
            raise EnsdistError(
                f"--output {cfg.output}: writing failed ({e.strerror or e}{where}); "
                f"complete chunks are kept in {shards.shard_dir(cfg.output)}: rerun the "
                "same command to resume"
            ) from None
        raise
    if world_size == 1 or _all_ok(True, run.device):
        if rank == 0:
            run.log(f"stitching {len(run.chunks)} chunks into {cfg.output}")
            shards.stitch(
                cfg.output,
                run.chunks,
                run.provenance,
                run.offsets,
                STITCH_BLOCK_ROWS,
                after_create=lambda: _test_kill("stitch-started"),
            )
            run.log(f"wrote {cfg.output} ({_human(os.path.getsize(cfg.output))})")
    else:
        raise StoreError(f"{shards.shard_dir(cfg.output)}: another rank failed; rerun to resume")
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return True


def _all_ok(ok: bool, device) -> bool:
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _memoize_share(run: Run):
    mine = shards.chunks_of_rank(run.chunks, run.rank, run.world_size)
    todo = [
        c
        for c in mine
        if not shards.is_complete(
            shards.chunk_path(run.cfg.output, c), c, run.provenance, run.offsets
        )
    ]
    if len(todo) < len(mine):
        run.log(
            f"resuming: {len(mine) - len(todo)} of this rank's {len(mine)} chunks are already complete"
        )
    total_sentences = sum(c[1] - c[0] for c in todo)
    state = {"sentences": 0, "tokens": 0, "start": time.time(), "last": time.time()}

    def progress(sentences, tokens):
        state["sentences"] += sentences
        state["tokens"] += tokens
        now = time.time()
        if now - state["last"] >= run.cfg.log_interval or state["sentences"] == total_sentences:
            state["last"] = now
            rate = state["tokens"] / max(now - state["start"], 1e-9)
            run.log(
                f"{state['sentences']}/{total_sentences} sentences "
                f"({100 * state['sentences'] / total_sentences:.1f}%), {rate:.0f} target tokens/s"
            )

    for number, chunk in enumerate(todo):
        run.memoize_chunk(number, chunk, progress)

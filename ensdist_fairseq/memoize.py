"""fairseq glue of `ensdist-memoize`: run the teacher ensemble over a split and write the store.

The math is in teacher_distribution.py, the file format in store/; this module loads the
checkpoints and the split, cuts the split into chunks (store/shards.py), shares the chunks
among torch.distributed ranks, and turns fairseq batches into store rows.
"""
import dataclasses
import datetime
import os
import shutil
import sys
import time
from typing import List, Optional

import numpy as np
import torch

from . import __version__
from .checkpoint_checks import check_ensemble, sha256_of_file
from .data.split_fingerprint import fingerprint
from .store import format as store_format
from .store import shards
from .store.provenance import Provenance, StoreError
from .teacher_distribution import EnsembleMean

# Rows copied per read/write while stitching: 1M rows of V'=64 is 256 MB at most per dataset
# read, large enough for sequential disk speed, small enough to keep memory flat.
STITCH_BLOCK_ROWS = 1 << 20
# Ranks wait for each other only at the end, after their whole share of the split: the
# collective timeout must exceed the longest share, not the usual seconds of a training step.
COLLECTIVE_TIMEOUT = datetime.timedelta(days=7)


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


class Run:
    """The ensemble, the split and this process's share of the work."""

    def __init__(self, cfg: MemoizeConfig, rank: int, world_size: int):
        from fairseq import checkpoint_utils, utils
        from . import register_with_fairseq

        register_with_fairseq()  # student/teacher checkpoints may name our task or model

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        check_ensemble(cfg.paths, cfg.data)
        use_cuda = torch.cuda.is_available() and not cfg.cpu
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(cfg.paths, arg_overrides={"data": cfg.data})
        self.models = [m.to(self.device).eval() for m in models]  # eval(): dropout off
        try:
            # combine=True: the same (train, train1, ...) concatenation and indices as fairseq-train
            task.load_dataset(cfg.split, combine=True)
        except FileNotFoundError:
            raise ValueError(f"--split {cfg.split}: no such split in {cfg.data}") from None
        except ValueError as e:  # fairseq cannot even open an empty binarized split (mmap of 0 bytes)
            raise ValueError(f"--split {cfg.split}: the split in {cfg.data} has no sentences ({e})") from None
        self.task, self.dataset = task, task.dataset(cfg.split)
        if len(self.dataset) == 0:
            raise ValueError(f"--split {cfg.split}: the split in {cfg.data} has no sentences")
        self.pad = task.target_dictionary.pad()
        vocab_size = len(task.target_dictionary)
        if not 0 < cfg.topk <= vocab_size:
            raise ValueError(f"--topk {cfg.topk}: must be in 1..{vocab_size} (the vocabulary size)")
        self._check_sizes(utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]))
        fp = fingerprint(self.dataset)
        self.offsets = np.concatenate([[0], np.cumsum(fp.target_lengths)]).astype(np.int64)
        self.provenance = Provenance(
            vocab_size=vocab_size, topk=cfg.topk, num_teachers=len(cfg.paths),
            teacher_sha256=tuple(sha256_of_file(p) for p in cfg.paths),
            dictionary_sha256=sha256_of_file(os.path.join(cfg.data, f"dict.{task.cfg.target_lang}.txt")),
            split=cfg.split, num_sentences=len(self.dataset), target_checksum=fp.target_checksum,
            source_checksum=fp.source_checksum, package_version=__version__)
        self.chunks = shards.plan_chunks(len(self.dataset), cfg.chunk_sentences)

    def _check_sizes(self, max_positions):
        num_tokens = self.dataset.num_tokens_vec(np.arange(len(self.dataset)))
        if self.cfg.max_tokens is not None and num_tokens.max() > self.cfg.max_tokens:
            i = int(num_tokens.argmax())
            raise ValueError(f"--max-tokens {self.cfg.max_tokens}: sentence {i} has {num_tokens[i]} tokens")
        src_max, tgt_max = max_positions if isinstance(max_positions, tuple) else (max_positions,) * 2
        for sizes, limit, side in ((self.dataset.src_sizes, src_max, "source"), (self.dataset.tgt_sizes, tgt_max, "target")):
            if limit is not None and sizes.max() > limit:
                i = int(sizes.argmax())
                raise ValueError(f"{self.cfg.data}: {side} of sentence {i} of {self.cfg.split} has {sizes[i]} "
                                 f"tokens, more than the teachers' {limit} positions")

    def log(self, msg: str):
        prefix = f"[rank {self.rank}/{self.world_size}] " if self.world_size > 1 else ""
        print(f"ensdist-memoize: {prefix}{msg}", file=sys.stderr, flush=True)

    def announce_size(self):
        n, rows = len(self.offsets) - 1, int(self.offsets[-1])
        nbytes = store_format.store_nbytes(n, rows, self.cfg.topk, self.provenance.vocab_size)
        per_entry = store_format.index_dtype(self.provenance.vocab_size).itemsize + store_format.PROB_DTYPE.itemsize
        self.log(f"{n} sentences, {rows} target tokens, V'={self.cfg.topk}, K={self.provenance.num_teachers}: "
                 f"the store will take {_human(nbytes)} ({per_entry} bytes per entry), "
                 f"twice that while its chunks are stitched")
        out_dir = os.path.dirname(os.path.abspath(self.cfg.output))
        free = shutil.disk_usage(out_dir).free
        if free < 2 * nbytes:
            raise ValueError(f"--output {self.cfg.output}: {_human(free)} free in {out_dir}, need {_human(2 * nbytes)}")

    def batches(self, chunk):
        from fairseq.data import data_utils

        ids = np.arange(*chunk, dtype=np.int64)
        num_tokens = self.dataset.num_tokens_vec(ids).astype(np.int64)  # the Cython batcher wants int64
        order = ids[np.argsort(num_tokens, kind="mergesort")]  # similar lengths: little padding
        # required_batch_size_multiple=1: fairseq 0.12 drops a last batch that is not a multiple.
        batches = data_utils.batch_by_size(
            order, self.dataset.num_tokens, num_tokens_vec=np.sort(num_tokens, kind="mergesort"),
            max_tokens=self.cfg.max_tokens, max_sentences=self.cfg.batch_size, required_batch_size_multiple=1)
        covered = np.sort(np.concatenate(batches)) if batches else np.array([], dtype=np.int64)
        if not np.array_equal(covered, ids):
            raise RuntimeError(f"batching covered {len(covered)} of the {len(ids)} sentences of chunk {chunk}")
        return batches

    @torch.inference_mode()
    def teacher_rows(self, batch_ids):
        """[(sentence id, indices, probs, precision)] for one batch."""
        from fairseq import utils

        sample = self.dataset.collater([self.dataset[int(i)] for i in batch_ids])
        sample = utils.move_to_cuda(sample, device=self.device) if self.device.type == "cuda" else sample
        target = sample["target"]
        mask = target.ne(self.pad)
        mean = EnsembleMean()
        for model in self.models:
            net_output = model(**sample["net_input"])
            mean.add(model.get_normalized_probs(net_output, log_probs=True)[mask])
        indices, probs = mean.top_k(self.cfg.topk)
        precision = mean.precision()
        lengths = mask.sum(1).tolist()
        indices, probs, precision = indices.cpu().numpy(), probs.cpu().numpy(), precision.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [(int(sid), indices[a:b], probs[a:b], precision[a:b])
                for sid, a, b in zip(sample["id"].tolist(), bounds[:-1], bounds[1:])]

    def memoize_chunk(self, chunk, progress):
        final = shards.chunk_path(self.cfg.output, chunk)
        shards.remove_stale_temporaries(final)
        tmp = shards.temporary_path(final)
        local = self.offsets[chunk[0]:chunk[1] + 1] - self.offsets[chunk[0]]
        layout = store_format.create(tmp, local, self.provenance, first_sentence=chunk[0])
        writer = store_format.RowWriter(tmp, layout, local)
        written = np.zeros(chunk[1] - chunk[0], dtype=bool)
        try:
            self._fill_chunk(chunk, local, writer, written, progress)
        except BaseException:
            writer.close()
            os.remove(tmp)  # a failed chunk leaves nothing behind (a killed one leaves a .tmp-PID)
            raise
        writer.close()
        if not written.all():
            raise RuntimeError(f"chunk {chunk}: {int((~written).sum())} sentences were not written")
        shards.commit(tmp, final)

    def _fill_chunk(self, chunk, local, writer, written, progress):
        for batch in self.batches(chunk):
            for sid, indices, probs, precision in self.teacher_rows(batch):
                if len(indices) != local[sid - chunk[0] + 1] - local[sid - chunk[0]]:
                    raise RuntimeError(f"sentence {sid}: {len(indices)} target tokens in the batch, "
                                       f"{self.offsets[sid + 1] - self.offsets[sid]} in the split's sizes")
                writer.write_sentence(sid - chunk[0], indices, probs, precision)
                written[sid - chunk[0]] = True
            progress(len(batch), int(sum(self.offsets[i + 1] - self.offsets[i] for i in batch)))


def _human(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def _distributed_context():
    """(rank, world_size) from torchrun's environment; (0, 1) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def memoize(cfg: MemoizeConfig) -> None:
    rank, world_size = _distributed_context()
    if os.path.exists(cfg.output):
        raise ValueError(f"--output {cfg.output}: already exists (remove it to memoize again)")
    run = Run(cfg, rank, world_size)  # validates every input before any process group exists
    if world_size > 1:
        import torch.distributed as dist

        backend = "nccl" if run.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    if rank == 0:
        run.announce_size()
    os.makedirs(shards.shard_dir(cfg.output), exist_ok=True)
    try:
        _memoize_share(run)
    except BaseException:
        if world_size > 1:
            run.log("failed; the other ranks will not stitch")
            _all_ok(False, run.device)
        raise
    if world_size == 1 or _all_ok(True, run.device):
        if rank == 0:
            run.log(f"stitching {len(run.chunks)} chunks into {cfg.output}")
            shards.stitch(cfg.output, run.chunks, run.provenance, run.offsets, STITCH_BLOCK_ROWS)
            run.log(f"wrote {cfg.output} ({_human(os.path.getsize(cfg.output))})")
    else:
        raise StoreError(f"{shards.shard_dir(cfg.output)}: another rank failed; rerun to resume")
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _all_ok(ok: bool, device) -> bool:
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _memoize_share(run: Run):
    mine = shards.chunks_of_rank(run.chunks, run.rank, run.world_size)
    todo = [c for c in mine if not shards.is_complete(shards.chunk_path(run.cfg.output, c), c, run.provenance, run.offsets)]
    if len(todo) < len(mine):
        run.log(f"resuming: {len(mine) - len(todo)} of this rank's {len(mine)} chunks are already complete")
    total_sentences = sum(c[1] - c[0] for c in todo)
    state = {"sentences": 0, "tokens": 0, "start": time.time(), "last": time.time()}

    def progress(sentences, tokens):
        state["sentences"] += sentences
        state["tokens"] += tokens
        now = time.time()
        if now - state["last"] >= run.cfg.log_interval or state["sentences"] == total_sentences:
            state["last"] = now
            rate = state["tokens"] / max(now - state["start"], 1e-9)
            run.log(f"{state['sentences']}/{total_sentences} sentences "
                    f"({100 * state['sentences'] / total_sentences:.1f}%), {rate:.0f} target tokens/s")

    for chunk in todo:
        run.memoize_chunk(chunk, progress)

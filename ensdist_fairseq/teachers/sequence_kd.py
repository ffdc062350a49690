"""Sequence-level knowledge distillation (Kim & Rush 2016): the teacher ensemble's beam-search
output replaces the references of a split, as a new fairseq data directory (fairseq glue).

    DATA --load_models/decode (fairseq's SequenceGenerator, the ensemble searched jointly)-->
    best hypothesis per source sentence --chunk files (OUT.shards/, committed by rename)-->
    OUT/: the split binarized with the teachers' hypotheses as targets; every other file of DATA
    (dictionaries, valid and test with their real references) copied unchanged

A student trains on OUT with plain `--task translation` (seqKD alone) or, after
`ensdist-memoize OUT ...`, with token-level KD on the distilled targets (seqKD + token KD).

Hypotheses stay token ids of the teachers' dictionary end to end (no detokenize / re-encode), so
nothing a post-processor does can change them. The work is cut into chunks of consecutive
sentences (store/shards.py: the same chunks for any number of processes); each torchrun rank
decodes its contiguous block of chunks; a chunk file is whole under its final name and records
what made it (teachers, data, split, search options): a rerun skips chunks of the same run and
refuses chunks of another. Whoever finds every chunk complete writes OUT (under a temporary
name, renamed when whole) under the one-writer lock.
"""

import dataclasses
import json
import os
import shutil
import sys
from typing import Dict, List, Optional

import numpy as np
import torch

from ensdist_fairseq.data.split_fingerprint import fingerprint
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.hashing import file_sha256
from ensdist_fairseq.store import shards
from ensdist_fairseq.teachers import teacher_forcing

MANIFEST = "seqkd.json"


@dataclasses.dataclass
class SeqKDConfig:
    data: str
    paths: List[str]
    out: str
    split: str
    generation: Dict[str, object]  # GenerationConfig overrides (beam, lenpen, max_len_a, ...)
    max_tokens: Optional[int]
    batch_size: Optional[int]
    chunk_sentences: int
    device: torch.device


def _log(msg: str) -> None:
    print(f"ensdist-seqkd: {msg}", file=sys.stderr, flush=True)


def _split_files(data: str, split: str) -> List[str]:
    """The binarized files of `split` (and fairseq's continuation shards split1, split2, ...)."""
    names = []
    for name in os.listdir(data):
        head = name.split(".", 1)[0]
        if head == split or (head.startswith(split) and head[len(split) :].isdigit()):
            if name.endswith((".bin", ".idx")):
                names.append(name)
    return names


def _chunk_path(out: str, chunk) -> str:
    return os.path.join(shards.shard_dir(out), f"chunk-{chunk[0]:012d}-{chunk[1]:012d}.npz")


def _read_chunk(out: str, chunk, record: dict) -> Optional[List[np.ndarray]]:
    """The chunk's hypotheses when `path` is this run's; None when absent; EnsdistError when it
    holds another run's (other teachers, data or search options)."""
    path = _chunk_path(out, chunk)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            made_by = json.loads(str(z["record"]))
            tokens, offsets = z["tokens"], z["offsets"]
    except (OSError, ValueError, KeyError) as e:
        raise EnsdistError(f"{path}: unreadable chunk ({e}); delete it to decode it again")
    if made_by != record:
        differs = sorted(k for k in set(made_by) | set(record) if made_by.get(k) != record.get(k))
        raise EnsdistError(
            f"{path}: made by another run ({', '.join(differs)} differ); remove "
            f"{shards.shard_dir(out)} or use another --out"
        )
    if len(offsets) != chunk[1] - chunk[0] + 1:
        raise EnsdistError(
            f"{path}: holds {len(offsets) - 1} sentences, expected {chunk[1] - chunk[0]}"
        )
    return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def _write_chunk(path: str, hypotheses: List[np.ndarray], record: dict) -> None:
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in hypotheses])]).astype(np.int64)
    tokens = np.concatenate(hypotheses).astype(np.int32) if hypotheses else np.zeros(0, np.int32)
    tmp = shards.temporary_path(path)
    with open(tmp, "wb") as f:
        np.savez(f, tokens=tokens, offsets=offsets, record=np.array(json.dumps(record)))
        f.flush()
        os.fsync(f.fileno())
    shards.commit(tmp, path)


class Run:
    """The ensemble, the split to distill and what identifies this run."""

    def __init__(self, cfg: SeqKDConfig):
        from ensdist_fairseq.checkpoints.checks import check_ensemble
        from ensdist_fairseq.evaluation import decoding

        self.cfg = cfg
        check_ensemble(cfg.paths, cfg.data)
        self.models, self.task = teacher_forcing.load_models(cfg.paths, cfg.data, cfg.device)
        try:
            self.task.load_dataset(cfg.split, combine=True)
        except FileNotFoundError:
            raise EnsdistError(f"--split {cfg.split}: no such split in {cfg.data}") from None
        self.dataset = self.task.dataset(cfg.split)
        if len(self.dataset) == 0:
            raise EnsdistError(f"--split {cfg.split}: the split in {cfg.data} has no sentences")
        self.where = f"split {cfg.split} of {cfg.data}"
        teacher_forcing.check_sizes(
            self.dataset,
            teacher_forcing.max_positions(self.task, self.models),
            cfg.max_tokens,
            self.where,
        )
        self.gen_cfg = decoding.generation_config(**{**cfg.generation, "nbest": 1})
        fp = fingerprint(self.dataset)
        src, tgt = self.task.cfg.source_lang, self.task.cfg.target_lang
        self.record = {
            "teacher_sha256": [file_sha256(p) for p in cfg.paths],
            "dictionary_sha256": file_sha256(os.path.join(cfg.data, f"dict.{tgt}.txt")),
            "split": cfg.split,
            "num_sentences": len(self.dataset),
            "source_checksum": fp.source_checksum,
            "generation": {k: cfg.generation[k] for k in sorted(cfg.generation)},
            "languages": [src, tgt],
        }
        self.chunks = shards.plan_chunks(len(self.dataset), cfg.chunk_sentences)

    def decode_chunk(self, chunk) -> List[np.ndarray]:
        from ensdist_fairseq.evaluation import decoding

        ids = np.arange(chunk[0], chunk[1], dtype=np.int64)
        best = {}
        for d in decoding.decode(
            self.models,
            self.task,
            self.dataset,
            self.gen_cfg,
            max_tokens=self.cfg.max_tokens,
            batch_size=self.cfg.batch_size,
            ids=ids,
            device=self.cfg.device,
            post_process=None,
            where=self.where,
        ):
            best[d.id] = d.hypotheses[0].tokens.numpy().astype(np.int32)
        return [best[int(i)] for i in ids]


def _assemble(run: Run, hypotheses: List[np.ndarray]) -> None:
    """OUT (written as OUT.tmp-PID, renamed when whole): DATA's files with the split re-made."""
    from fairseq.data import indexed_dataset

    cfg, (src, tgt) = run.cfg, run.record["languages"]
    tmp = shards.temporary_path(cfg.out)
    os.makedirs(tmp)
    try:
        skip = set(_split_files(cfg.data, cfg.split))
        for name in sorted(os.listdir(cfg.data)):
            path = os.path.join(cfg.data, name)
            if os.path.isfile(path) and name not in skip:
                shutil.copy2(path, os.path.join(tmp, name))
        prefix = os.path.join(tmp, f"{cfg.split}.{src}-{tgt}")
        for lang, rows in (
            (src, (run.dataset.src[i] for i in range(len(run.dataset)))),
            (tgt, (torch.from_numpy(h.astype(np.int64)) for h in hypotheses)),
        ):
            vocab = len(run.task.source_dictionary if lang == src else run.task.target_dictionary)
            builder = indexed_dataset.make_builder(
                f"{prefix}.{lang}.bin", impl="mmap", vocab_size=vocab
            )
            for row in rows:
                builder.add_item(torch.as_tensor(row, dtype=torch.int64))
            builder.finalize(f"{prefix}.{lang}.idx")
        lengths = [len(h) for h in hypotheses]
        manifest = {
            **run.record,
            "data": os.path.abspath(cfg.data),
            "mean_target_length": float(np.mean(lengths)),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, cfg.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sequence_kd(cfg: SeqKDConfig) -> bool:
    """Decode this rank's chunks; assemble OUT when every chunk is complete. True when OUT was
    written (by this process)."""
    if os.path.exists(cfg.out):
        raise EnsdistError(f"--out {cfg.out}: already exists (remove it to distill again)")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    run = Run(cfg)
    os.makedirs(shards.shard_dir(cfg.out), exist_ok=True)
    mine = shards.chunks_of_rank(run.chunks, rank, world_size)
    for number, chunk in enumerate(mine, 1):
        if _read_chunk(cfg.out, chunk, run.record) is not None:
            continue
        _write_chunk(_chunk_path(cfg.out, chunk), run.decode_chunk(chunk), run.record)
        _log(
            f"[rank {rank}/{world_size}] chunk {number}/{len(mine)}: sentences {chunk[0]}..{chunk[1] - 1}"
        )
    try:
        lock = shards.OutputLock(cfg.out)
    except EnsdistError:
        return False  # another process is assembling
    try:
        if os.path.exists(cfg.out):
            return False
        hypotheses = []
        for chunk in run.chunks:
            rows = _read_chunk(cfg.out, chunk, run.record)
            if rows is None:
                _log(
                    f"sentences {chunk[0]}.. are not decoded yet: another rank will assemble {cfg.out}"
                )
                return False
            hypotheses += rows
        _assemble(run, hypotheses)
        shutil.rmtree(shards.shard_dir(cfg.out))
        _log(
            f"wrote {cfg.out}: {len(hypotheses)} sentences of {cfg.split} with the teachers' targets"
        )
        return True
    finally:
        lock.release(remove=True)

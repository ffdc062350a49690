"""Checks that a set of checkpoints can be used together on a data directory.

An ensemble averages the members' probabilities index by index, so every member must use the
data directory's target dictionary; fairseq itself would fail late with a shape error (or,
for dictionaries of equal size, silently mix up tokens).
"""
import hashlib
import os
from typing import Sequence

from .safe_loading import load_checkpoint


def sha256_of_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _num_dictionary_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _inferred_target_lang(data_dir: str):
    """The target language fairseq's translation task infers from `data_dir` (train.src-tgt.*)."""
    from fairseq.data.data_utils import infer_language_pair

    return infer_language_pair(data_dir)[1]


def check_ensemble(paths: Sequence[str], data_dir: str) -> None:
    """Raise ValueError naming the first checkpoint that does not fit `data_dir`.

    Each member must be a fairseq checkpoint whose decoder output size equals the data's target
    dictionary (4 special symbols + the dictionary file's lines) and, when the dictionary it
    was trained with still exists, whose dictionary file is byte-identical to the data's."""
    if not os.path.isdir(data_dir):
        raise ValueError(f"{data_dir}: data directory not found")
    if not paths:
        raise ValueError("--path: no checkpoints given")
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"{p}: checkpoint not found")
    state0 = None
    for p in paths:
        state = load_checkpoint(p)
        if not isinstance(state, dict) or "model" not in state or "cfg" not in state:
            raise ValueError(f"{p}: not a fairseq checkpoint (no 'model'/'cfg' entries)")
        task = (state["cfg"] or {}).get("task") or {}
        tgt = task.get("target_lang") or _inferred_target_lang(data_dir)
        data_dict = os.path.join(data_dir, f"dict.{tgt}.txt")
        if tgt is None or not os.path.isfile(data_dict):
            raise ValueError(f"{data_dir}: no dict.{tgt}.txt for the target language of {p}")
        out = state["model"].get("decoder.output_projection.weight",
                                 state["model"].get("decoder.embed_tokens.weight"))
        expected = 4 + _num_dictionary_lines(data_dict)
        if out is not None and out.shape[0] != expected:
            raise ValueError(f"{p}: output vocabulary {out.shape[0]} != {expected} symbols of {data_dict} "
                             "(trained with a different dictionary)")
        trained_dict = os.path.join(str(task.get("data", "")).split(":")[0], f"dict.{tgt}.txt")
        if os.path.isfile(trained_dict) and sha256_of_file(trained_dict) != sha256_of_file(data_dict):
            raise ValueError(f"{p}: trained with {trained_dict}, which differs from {data_dict}")
        if state0 is None:
            state0 = (p, tgt)
        elif tgt != state0[1]:
            raise ValueError(f"{p}: target language {tgt} differs from {state0[0]}'s {state0[1]}")

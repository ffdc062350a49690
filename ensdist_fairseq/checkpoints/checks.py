"""Checks that a set of checkpoints can be used together on a data directory.

An ensemble averages the members' probabilities index by index, so every member must use the
data directory's target dictionary; fairseq itself would fail late with a shape error (or, for
dictionaries of equal size, silently mix up tokens).

What is compared, and why it is sound (docs/store-format.md, "Dictionaries"):
  - the decoder's output size against the data's dictionary size: always known;
  - the dictionary's CONTENT: `--task translation_distill` returns the sha256 of its target
    dictionary from task.state_dict(), which fairseq's Trainer saves in every checkpoint as
    state["task_state"]["target_dictionary_sha256"]; it is compared with the sha256 of the data's
    dictionary file. A checkpoint of another task has no such record: its training data path
    (cfg.task.data) was given relative to a training directory we do not know, so it is never
    resolved against the current directory; only an absolute recorded path whose dictionary
    differs gives a warning.
"""

import logging
import os
from typing import Optional, Sequence

from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint, model_config
from ensdist_fairseq.errors import COLON_MESSAGE, EnsdistError, colon_in_path
from ensdist_fairseq.hashing import file_sha256

logger = logging.getLogger(__name__)

# The key under state["task_state"] where translation_distill records its target dictionary's sha256.
DICTIONARY_SHA256_KEY = "target_dictionary_sha256"


def _num_dictionary_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _inferred_target_lang(data_dir: str):
    """The target language fairseq's translation task infers from `data_dir` (train.src-tgt.*)."""
    from fairseq.data.data_utils import infer_language_pair

    return infer_language_pair(data_dir)[1]


def _get(cfg, key, default=None):
    """cfg may be a dict (dataclass checkpoints) or an argparse.Namespace (legacy ones)."""
    if cfg is None:
        return default
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def check_ensemble(
    paths: Sequence[str], data_dir: str, teacher_dicts: Optional[Sequence[str]] = None
) -> None:
    """Raise EnsdistError naming the first checkpoint that does not fit `data_dir`.

    teacher_dicts: the target dictionary each checkpoint was trained with (one for all, or one
    per checkpoint), for checkpoints that record no dictionary checksum (`--task translation`);
    without it, a dict.<tgt>.txt beside the checkpoint file (how pretrained fairseq models are
    shipped) is compared when there is one."""
    if not os.path.isdir(data_dir):
        raise EnsdistError(f"{data_dir}: data directory not found")
    if not paths:
        raise EnsdistError("--path: no checkpoints given")
    for i, p in enumerate(paths):
        if not os.path.isfile(p):
            raise EnsdistError(_not_found(paths, i))
    teacher_dicts = list(teacher_dicts or [])
    if len(teacher_dicts) not in (0, 1, len(paths)):
        raise EnsdistError(
            f"--teacher-dict: {len(teacher_dicts)} dictionaries for {len(paths)} checkpoints "
            "(give one for all or one per checkpoint)"
        )
    for d in teacher_dicts:
        if not os.path.isfile(d):
            raise EnsdistError(f"--teacher-dict {d}: file not found")
    first = None
    for i, p in enumerate(paths):
        state = load_checkpoint(p)
        model_cfg, task = model_config(state)
        if not isinstance(state, dict) or "model" not in state or model_cfg is None:
            raise EnsdistError(
                f"{p}: not a fairseq checkpoint (no 'model' and 'cfg' or 'args' entries)"
            )
        check_architecture(p, model_cfg)
        task = task or {}
        tgt = _get(task, "target_lang") or _inferred_target_lang(data_dir)
        data_dict = os.path.join(data_dir, f"dict.{tgt}.txt")
        if tgt is None or not os.path.isfile(data_dict):
            raise EnsdistError(f"{data_dir}: no dict.{tgt}.txt for the target language of {p}")
        out = state["model"].get(
            "decoder.output_projection.weight", state["model"].get("decoder.embed_tokens.weight")
        )
        expected = 4 + _num_dictionary_lines(data_dict)
        if out is not None and out.shape[0] != expected:
            raise EnsdistError(
                f"{p}: output vocabulary {out.shape[0]} != {expected} symbols of {data_dict} "
                "(trained with a different dictionary)"
            )
        given = teacher_dicts[min(i, len(teacher_dicts) - 1)] if teacher_dicts else None
        check_dictionary_record(p, state.get("task_state") or {}, task, data_dict, given)
        if first is None:
            first = (p, tgt)
        elif tgt != first[1]:
            raise EnsdistError(f"{p}: target language {tgt} differs from {first[0]}'s {first[1]}")


def first_dictionary_difference(a: str, b: str) -> Optional[str]:
    """'line N: <symbol a> vs <symbol b>' of the first differing entry of two fairseq dictionary
    files (the symbols only: counts do not change token ids), None when they agree."""

    def symbols(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").rsplit(" ", 1)[0] for line in f]

    sa, sb = symbols(a), symbols(b)
    for n, (x, y) in enumerate(zip(sa, sb), start=1):
        if x != y:
            return f"line {n}: {x!r} vs {y!r}"
    if len(sa) != len(sb):
        return f"{len(sa)} vs {len(sb)} entries"
    return None


def _not_found(paths: Sequence[str], i: int) -> str:
    """'not found', or, when the missing piece was cut from a file whose name has a ':', that
    the colon is fairseq's ensemble separator (fairseq splits --path on every ':')."""
    joined = colon_in_path(list(paths))
    if joined is not None:
        return f"{joined}: {COLON_MESSAGE}"
    return f"{paths[i]}: checkpoint not found"


def check_architecture(checkpoint: str, model_cfg) -> None:
    """EnsdistError naming the file when its architecture is not registered with fairseq (a
    model of a plugin that is not loaded), instead of fairseq's KeyError or IndexError."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    from ensdist_fairseq import register_with_fairseq

    register_with_fairseq()  # our own architectures are known
    arch = _get(model_cfg, "_name") or _get(model_cfg, "arch")
    if arch is not None and arch not in ARCH_MODEL_REGISTRY and arch not in MODEL_REGISTRY:
        raise EnsdistError(
            f"{checkpoint}: unknown architecture '{arch}' (not registered with fairseq: "
            "a model of another plugin? give its directory with --user-dir)"
        )


def check_dictionary_record(
    checkpoint: str, task_state: dict, task_cfg, data_dict: str, teacher_dict: Optional[str] = None
) -> None:
    """Compare the dictionary sha256 recorded in a checkpoint's task state with `data_dict`;
    without a record, compare `teacher_dict` (or a dictionary of that name beside the checkpoint)
    with `data_dict` by content."""
    recorded = task_state.get(DICTIONARY_SHA256_KEY) if isinstance(task_state, dict) else None
    if recorded:
        actual = file_sha256(data_dict)
        if recorded != actual:
            raise EnsdistError(
                f"{checkpoint}: trained with another dictionary than {data_dict} "
                f"(sha256 {recorded[:12]}… recorded in the checkpoint, {actual[:12]}… in the file)"
            )
        return
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), os.path.basename(data_dict))
    shipped = teacher_dict or (beside if os.path.isfile(beside) else None)
    if shipped is not None:
        difference = first_dictionary_difference(shipped, data_dict)
        if difference is not None:
            flag = "--teacher-dict " if teacher_dict else ""
            raise EnsdistError(
                f"{flag}{shipped}: the dictionary of {checkpoint} differs from {data_dict} "
                f"({difference}): its distributions would be stored under other tokens"
            )
        return
    trained_data = str(_get(task_cfg, "data", "") or "").split(":")[0]
    trained_dict = os.path.join(trained_data, os.path.basename(data_dict))
    if (
        os.path.isabs(trained_data)
        and os.path.isfile(trained_dict)
        and os.path.realpath(trained_dict) != os.path.realpath(data_dict)
        and file_sha256(trained_dict) != file_sha256(data_dict)
    ):
        logger.warning(
            f"{checkpoint}: records no dictionary checksum, and {trained_dict} (its training "
            f"data path) differs from {data_dict}; the dictionary there may have changed since"
        )

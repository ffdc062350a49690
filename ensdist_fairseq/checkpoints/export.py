"""A Dirichlet student as a plain fairseq `transformer` checkpoint (fairseq glue).

A `dirichlet_transformer` is fairseq's Transformer with its logits z read as Dirichlet
log-concentrations; its default predictive, softmax(z), is exactly what a plain Transformer
with the same weights computes. Plain fairseq (no --user-dir) cannot load the student: its
architecture, its task (translation_distill) and its criterion are the plugin's, and torch's
safe loader refuses the argparse.Namespace and numpy arrays fairseq pickles. The export keeps
the weights as they are and rewrites the rest so fairseq alone loads it:

  - model: arch `dirichlet_transformer[_X]` -> `transformer[_X]`, the plugin's option dropped;
  - task: `translation` with the options fairseq's TranslationConfig has;
  - criterion: `label_smoothed_cross_entropy` with the student's label smoothing;
  - every argparse.Namespace in cfg as a plain dict, the training state (optimizer, metrics
    with their numpy arrays) left out: the file holds only what torch loads by default.
"""

import argparse
import dataclasses
import io
import os

import torch

from ensdist_fairseq.atomic_files import atomic_open
from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint
from ensdist_fairseq.errors import EnsdistError

PLUGIN_OPTIONS = ("dirichlet_predictive",)
HISTORY_KEYS = ("criterion_name", "optimizer_name", "lr_scheduler_state", "num_updates")
EXTRA_KEYS = ("train_iterator", "val_loss", "best")


def _plain(value):
    """cfg with every argparse.Namespace as a dict (fairseq makes a DictConfig of either)."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _fields(config_class) -> set:
    return {f.name for f in dataclasses.fields(config_class)}


def plain_transformer_state(state: dict, path: str, force_softmax: bool = False) -> dict:
    """The checkpoint `state` (of `path`) of a Dirichlet student as a plain transformer's.
    force_softmax: also when the student decodes with the Dirichlet mean (the export then
    decodes with softmax(z), not as the student does)."""
    from fairseq.criterions.label_smoothed_cross_entropy import (
        LabelSmoothedCrossEntropyCriterionConfig,
    )
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.tasks.translation import TranslationConfig

    cfg = state.get("cfg") if isinstance(state, dict) else None
    if cfg is None or "model" not in state:
        raise EnsdistError(f"{path}: not a fairseq checkpoint with a cfg (fairseq >= 0.11)")
    cfg = _plain(cfg)
    model = dict(cfg.get("model") or {})
    arch = model.get("arch") or model.get("_name")
    if arch is None or not str(arch).startswith("dirichlet_transformer"):
        raise EnsdistError(f"{path}: architecture {arch!r} is not a dirichlet_transformer")
    from ensdist_fairseq.models.dirichlet_transformer import LEGACY_PREDICTIVE

    recorded = model.get("dirichlet_predictive")
    predictive = recorded or LEGACY_PREDICTIVE  # how the plugin loads a checkpoint without one
    if predictive != "softmax" and not force_softmax:
        why = "records no dirichlet_predictive, so it" if recorded is None else "is saved to"
        raise EnsdistError(
            f"{path}: {why} decode{'s' if recorded is None else ''} with the Dirichlet mean "
            f"({predictive}); a plain transformer computes softmax(z) only "
            "(--softmax-predictive exports softmax(z) anyway)"
        )
    plain_arch = "transformer" + str(arch)[len("dirichlet_transformer") :]
    if plain_arch not in ARCH_MODEL_REGISTRY:
        raise EnsdistError(f"{path}: no plain fairseq architecture {plain_arch} for {arch}")
    for key in PLUGIN_OPTIONS:
        model.pop(key, None)
    model["arch"] = plain_arch
    model["_name"] = plain_arch
    task = {k: v for k, v in (cfg.get("task") or {}).items() if k in _fields(TranslationConfig)}
    task["_name"] = "translation"
    criterion = {
        k: v
        for k, v in (cfg.get("criterion") or {}).items()
        if k in _fields(LabelSmoothedCrossEntropyCriterionConfig)
    }
    criterion["_name"] = "label_smoothed_cross_entropy"
    cfg.update(model=model, task=task, criterion=criterion)
    return {
        "cfg": cfg,
        "model": state["model"],
        # what fairseq's loader reads (its upgrade step expects them), without the optimizer's
        # state or the metrics (numpy arrays)
        "optimizer_history": [
            {k: v for k, v in h.items() if k in HISTORY_KEYS}
            for h in state.get("optimizer_history") or []
        ],
        "extra_state": {
            k: v for k, v in (state.get("extra_state") or {}).items() if k in EXTRA_KEYS
        },
        "task_state": state.get("task_state") or {},
    }


def check_loads_without_plugin(f, name: str) -> None:
    """EnsdistError when torch's default loader would need anything beyond its own types."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(f)
    finally:
        torch.serialization.add_safe_globals(saved)
    if unsafe:
        raise EnsdistError(f"{name}: would pickle {', '.join(unsafe)} (a bug: please report)")


def export_plain_transformer(path: str, output: str, force_softmax: bool = False) -> str:
    """Write the Dirichlet student `path` as a plain transformer checkpoint `output`; returns
    its architecture. Checked to need nothing beyond torch's own types before it is written."""
    if os.path.exists(output) and os.path.samefile(path, output):
        raise EnsdistError(f"--output {output}: is the input checkpoint")
    state = plain_transformer_state(load_checkpoint(path), path, force_softmax)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    check_loads_without_plugin(buffer, output)
    with atomic_open(output, "wb") as f:
        f.write(buffer.getbuffer())
    return state["cfg"]["model"]["arch"]

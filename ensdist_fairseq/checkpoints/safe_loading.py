"""Let torch's safe (weights_only) unpickler read fairseq checkpoints.

torch >= 2.6 loads with weights_only=True by default, and fairseq 0.12 checkpoints fail with
``Unsupported global: GLOBAL argparse.Namespace``: legacy (non-dataclass) architectures such as
``transformer`` keep their hyper-parameters in ``cfg["model"]`` as an argparse.Namespace, and
checkpoints of fairseq 0.10 and older keep everything in ``state["args"]``, a Namespace too.
A student trained with ``--eval-bleu`` also pickles numpy arrays: fairseq's translation task logs
the BLEU n-gram counts as ``np.array`` into the metric state that ``extra_state["metrics"]``
saves. We allow-list exactly these types, by name, so fairseq-train (restore), fairseq-generate
and fairseq-validate work, while a checkpoint that pickles any other global is still refused.
weights_only is never switched off.
"""

import argparse

import numpy as np
import torch

# numpy 2 pickles arrays as numpy._core.multiarray._reconstruct(ndarray, shape, dtype) and a
# dtype as its class (numpy.dtypes.Int64DType); numpy 1 as numpy.core.multiarray._reconstruct and
# numpy.dtype. Both spellings are accepted, so a checkpoint written under either numpy loads.
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct

# The dtypes of what fairseq logs as arrays (counts: integers; averages: floats). Object and
# void dtypes are deliberately absent.
_NUMERIC_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
)  # fmt: skip


def _dtype_classes():
    """[(class, pickled name)] of the numeric dtype classes numpy 2 pickles (none in numpy 1)."""
    out = []
    for name in _NUMERIC_DTYPES:
        cls = type(np.dtype(name))
        if cls is not np.dtype:  # numpy >= 1.25: one class per dtype, pickled by name in numpy 2
            out.append((cls, f"numpy.dtypes.{cls.__name__}"))
    return out


# Every global found in checkpoints written by fairseq-train (last/best/epoch/update-interval,
# --keep-best-checkpoints, --store-ema, --eval-bleu, fp32 and fp16 loss-scaler state), by fairseq
# 0.10 (args only) and by our SWA averaging, checked with
# torch.serialization.get_unsafe_globals_in_checkpoint (tests/test_checkpoint_matrix.py).
FAIRSEQ_CHECKPOINT_GLOBALS = (
    (argparse.Namespace, "argparse.Namespace"),
    (np.ndarray, "numpy.ndarray"),
    (np.dtype, "numpy.dtype"),
    (_reconstruct, "numpy._core.multiarray._reconstruct"),
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    *_dtype_classes(),
)


def allowed_names() -> set:
    """The pickled names of the allow-list ('argparse.Namespace', 'numpy.ndarray', ...)."""
    return {name for _obj, name in FAIRSEQ_CHECKPOINT_GLOBALS}


def allow_fairseq_checkpoints() -> None:
    """Add the fairseq checkpoint types to torch's weights_only allow-list (idempotent)."""
    torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))


def load_checkpoint(path: str, map_location="cpu"):
    """torch.load a fairseq checkpoint with the safe loader; raise EnsdistError naming the file
    (truncated, not a checkpoint, or pickling a type outside the allow-list)."""
    from ensdist_fairseq.errors import EnsdistError, unpickling_refusal

    allow_fairseq_checkpoints()
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle errors, zip errors, truncated files
        raise EnsdistError(
            f"{path}: not a loadable fairseq checkpoint ({unpickling_refusal(e)})"
        ) from None


def model_config(state: dict):
    """(model cfg, task cfg) of a checkpoint: cfg['model'] / cfg['task'] of fairseq >= 0.11, or
    the one args Namespace of fairseq 0.10 and older (what fairseq itself upgrades on load).
    None, None when the state has neither."""
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if cfg is not None:
        get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)
        return get("model"), get("task")
    args = state.get("args") if isinstance(state, dict) else None
    if isinstance(args, argparse.Namespace):
        return args, args
    return None, None

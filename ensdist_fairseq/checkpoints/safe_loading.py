"""Let torch's safe (weights_only) unpickler read fairseq checkpoints.

torch >= 2.6 loads with weights_only=True by default, and fairseq 0.12 checkpoints fail with
``Unsupported global: GLOBAL argparse.Namespace``: legacy (non-dataclass) architectures such as
``transformer`` keep their hyper-parameters in ``cfg["model"]`` as an argparse.Namespace.
We allow-list exactly the types a fairseq translation checkpoint contains, so fairseq-train
(restore), fairseq-generate and fairseq-validate work, while a checkpoint that pickles any other
global is still refused. weights_only is never switched off.
"""

import argparse

import torch

# Every global found in checkpoints written by fairseq-train (last/best/epoch, fp32 and fp16)
# and by our SWA averaging, checked with torch.serialization.get_unsafe_globals_in_checkpoint.
FAIRSEQ_CHECKPOINT_GLOBALS = (argparse.Namespace,)


def allow_fairseq_checkpoints() -> None:
    """Add the fairseq checkpoint types to torch's weights_only allow-list (idempotent)."""
    torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))


def load_checkpoint(path: str, map_location="cpu"):
    """torch.load a fairseq checkpoint with the safe loader; raise EnsdistError naming the file
    (truncated, not a checkpoint, or pickling a type outside the allow-list)."""
    from ensdist_fairseq.errors import EnsdistError

    allow_fairseq_checkpoints()
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle errors, zip errors, truncated files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnsdistError(f"{path}: not a loadable fairseq checkpoint ({first})") from None

"""ensdist_fairseq: ensemble distillation for NMT, as a fairseq user-dir plugin.

Importing the package allow-lists the types fairseq checkpoints pickle for torch's weights_only
loader. When fairseq is in use (fairseq's ``--user-dir`` loader imports fairseq first, then us)
it also registers the plugin's task, criterion and models; code that imports us before fairseq
calls ``register_with_fairseq()``. The math and file formats (``losses``, ``evaluation.calibration``,
``store``, ``corpus``) never import fairseq, so they stay light and usable on their own.
"""

import sys

__version__ = "0.1.0"

from ensdist_fairseq.checkpoints import safe_loading  # noqa: E402

safe_loading.allow_fairseq_checkpoints()


def register_with_fairseq() -> None:
    """Register the task, criterion, models and ECE scorer with fairseq (idempotent).

    Also makes an EnsdistError raised inside fairseq's commands print one ``error:`` line
    instead of a traceback (errors.install_excepthook; other exceptions are untouched)."""
    from ensdist_fairseq import criterions, errors, models, tasks  # noqa: F401

    # fairseq-generate --scoring ece
    from ensdist_fairseq.evaluation import ece_scorer  # noqa: F401

    errors.install_excepthook()


if "fairseq" in sys.modules:
    register_with_fairseq()

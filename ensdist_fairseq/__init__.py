"""ensdist_fairseq: ensemble distillation for NMT, as a fairseq user-dir plugin.

Importing the package (what ``fairseq-* --user-dir`` does) allow-lists the types fairseq
checkpoints pickle for torch's weights_only loader and registers the plugin's task and
criterion with fairseq. The math lives in fairseq-free modules (``losses``, ``calibration``,
``store``) so it can be used and tested on its own.
"""

__version__ = "0.1.0"

from . import safe_loading

safe_loading.allow_fairseq_checkpoints()

# Registration with fairseq's registries happens when these packages are imported.
from . import criterions, models, tasks  # noqa: E402,F401

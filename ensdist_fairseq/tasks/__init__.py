"""fairseq tasks registered by the plugin (fairseq's --user-dir loader imports them too)."""
from . import translation_distill  # noqa: F401

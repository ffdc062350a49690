"""fairseq tasks registered by the plugin (fairseq's --user-dir loader imports them too)."""

from ensdist_fairseq.tasks import translation_distill  # noqa: F401

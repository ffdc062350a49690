"""fairseq criteria registered by the plugin."""

from ensdist_fairseq.criterions import token_kd  # noqa: F401

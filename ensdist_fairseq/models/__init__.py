"""fairseq models registered by the plugin."""

from ensdist_fairseq.models import dirichlet_transformer  # noqa: F401

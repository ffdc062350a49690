"""fairseq models registered by the plugin."""
from . import dirichlet_transformer  # noqa: F401

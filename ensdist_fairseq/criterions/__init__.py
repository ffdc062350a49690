"""fairseq criteria registered by the plugin."""
from . import token_kd  # noqa: F401

"""fairseq criteria registered by the plugin."""

"""fairseq tasks registered by the plugin (imported by fairseq's --user-dir loader too)."""

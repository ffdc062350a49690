"""Checkpoints: torch's weights_only loader with an explicit allow-list (safe_loading), the checks
that a checkpoint belongs to the data (checks), and stochastic weight averaging of epoch
checkpoints into one (swa). fairseq glue: loads fairseq's checkpoint layout."""

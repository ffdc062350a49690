"""Training helpers: safe checkpoint loading, checkpoint/data checks, SWA weight averaging."""

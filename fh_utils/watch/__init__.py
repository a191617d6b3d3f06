"""Which files count, and a watcher that reports each save whole."""

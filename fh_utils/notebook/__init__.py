"""fh_utils in a notebook: the `%fh` magics, reloads between cells, and the kernel's server."""

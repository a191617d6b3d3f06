"""What the browser gets: the live-reload script and middleware, the error overlay's editor."""

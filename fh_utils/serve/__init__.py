"""Serving: the switch uvicorn serves, the dev session, its tiers and processes, `serve()`."""

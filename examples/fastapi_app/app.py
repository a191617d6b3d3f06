"""A FastAPI app with its routes in a router module.

    fh_utils dev examples/fastapi_app/app.py     # then open http://127.0.0.1:5001/docs

Edit items.py: it re-runs, then this module (which imports it), and the new app serves the next
request, /docs and /openapi.json included.
"""

from fastapi import FastAPI
from items import router

app = FastAPI(title="fh_utils FastAPI example")
app.include_router(router)


@app.get("/")
def root() -> dict[str, str]:
    return {"message": "Hello from FastAPI", "items": "/items/"}

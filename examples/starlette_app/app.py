"""A Starlette app whose page is an HTML file read at import.

    fh_utils dev examples/starlette_app/app.py     # then open http://127.0.0.1:5001

Edit page.html: fh_utils noted that this module read it, so it re-runs app.py. Edit a route
below and the next request runs the new code.
"""

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

PAGE = (Path(__file__).parent / "page.html").read_text()


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def hello(request: Request) -> JSONResponse:
    name = request.query_params.get("name", "world")
    return JSONResponse({"message": f"Hello, {name}!"})


app = Starlette(routes=[Route("/", homepage), Route("/api/hello", hello)])

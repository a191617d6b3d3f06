"""A FastHTML app around a slow model: edit this file and the model stays loaded.

    fh_utils dev app.py      # from this directory; then open http://127.0.0.1:5001
"""

from fasthtml.common import H1, Form, Input, P, Titled, fast_app
from models import load_model

MODEL = load_model()  # seconds on the first run, a cache hit on every reload

app, rt = fast_app()


@rt("/")
def get(prompt: str = "the server"):
    return Titled(
        "Model demo",
        H1("Complete a sentence"),
        Form(Input(name="prompt", value=prompt), method="get"),
        P(MODEL.complete(prompt), id="completion"),
        P(f"{MODEL.name}: {MODEL.vocabulary} words from {MODEL.files} files"),
    )

"""A minimal FastHTML app: edit a line here or in helpers.py and watch it go live."""

from fasthtml.common import H1, Li, P, Titled, Ul, fast_app

from helpers import greeting, shopping_list

app, rt = fast_app()


@rt("/")
def get():
    return Titled(
        "fh_utils demo",
        H1(greeting("world")),
        P("Edit app.py or helpers.py and save: the page is live again before you look."),
        Ul(*[Li(item) for item in shopping_list()]),
    )

"""A FastHTML app inside a package: `from .catalog import ...` works under fh_utils dev.

    fh_utils dev examples/src_layout/src/shop/app.py     # then open http://127.0.0.1:5001

fh_utils walks up the `__init__.py` files to run this file as `shop.app`, with `src/` on
`sys.path`. Edit catalog.py or prices.py: they re-run, then this module.
"""

from fasthtml.common import Li, Titled, Ul, fast_app

from .catalog import PRODUCTS
from .prices import format_price

app, rt = fast_app()


@rt("/")
def get():
    return Titled("Shop", Ul(*[Li(f"{name}: {format_price(cents)}") for name, cents in PRODUCTS]))

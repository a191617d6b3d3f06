"""How prices are shown."""

CURRENCY = "€"


def format_price(cents: int) -> str:
    return f"{cents / 100:.2f} {CURRENCY}"

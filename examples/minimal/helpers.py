"""A dependency of app.py: editing it re-runs this module, then app.py."""


def greeting(name: str) -> str:
    return f"Hello, {name}!"


def shopping_list() -> list[str]:
    return ["coffee", "bread", "cheese"]

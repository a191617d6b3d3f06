"""A project module the notebook imports: edit it and save, the page follows."""


def greeting(name: str) -> str:
    return f"Hello, {name}!"

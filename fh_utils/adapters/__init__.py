"""Other packages' private parts, each reached through one module here and checked there.

uvicorn and watchfiles are unpinned: a new user gets their newest release. A private shape
that changed fails here, once, with `IncompatibleVersion` naming the package, its version and
what is missing, instead of as an `AttributeError` deep inside a reload.
"""

from __future__ import annotations

__all__ = ["IncompatibleVersion"]


class IncompatibleVersion(RuntimeError):
    """An installed package no longer has the shape fh_utils relies on."""

    def __init__(self, package: str, version: str, what: str) -> None:
        super().__init__(
            f"fh_utils relies on {what} of {package}, which {package} {version} does not have "
            f"in the expected form: install a {package} version fh_utils supports (see its "
            "pyproject.toml) or upgrade fh_utils")
        self.package = package
        self.version = version
        self.what = what

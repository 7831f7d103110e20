"""Typed errors of the runtime; every one names what was wrong."""


class GenattnRuntimeError(Exception):
    """Base class of runtime errors."""


class BundleError(GenattnRuntimeError):
    """The bundle is missing, tampered with, or of an unsupported format version."""


class BackendUnavailableError(GenattnRuntimeError):
    """A requested inference backend cannot run here (library, driver or GPU missing)."""


class InputError(GenattnRuntimeError, ValueError):
    """A request is malformed: wrong types, empty input, k out of range."""


class UnknownItemError(InputError):
    """A history holds item ids the bundle's catalog does not know (policy 'error')."""

    def __init__(self, unknown: list, message: str | None = None):
        self.unknown = unknown
        super().__init__(message or f"unknown item id(s): {unknown[:10]}{' …' if len(unknown) > 10 else ''}")

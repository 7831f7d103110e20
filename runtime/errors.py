"""Typed errors of the runtime; every one names what was wrong."""


class GenattnRuntimeError(Exception):
    """Base class of runtime errors."""


class BundleError(GenattnRuntimeError):
    """The bundle is missing, malformed, tampered with, or of an unsupported format version."""


class SignatureError(BundleError):
    """The bundle is unsigned, signed by no trusted key, or its signature does not verify."""


class KeyFileError(GenattnRuntimeError, ValueError):
    """A signing or trusted key is unreadable or not an Ed25519 key."""


class RecommenderClosedError(GenattnRuntimeError):
    """The Recommender was closed; its backend is released and it takes no more calls."""


class InferenceError(GenattnRuntimeError):
    """The backend failed while running the graph (not the caller's input)."""


class BackendUnavailableError(GenattnRuntimeError):
    """A requested inference backend cannot run here (library, driver or GPU missing)."""


class InputError(GenattnRuntimeError, ValueError):
    """A request is malformed: wrong types, empty input, k out of range."""


class UnknownItemError(InputError):
    """A history holds item ids the bundle's catalog does not know (policy 'error')."""

    def __init__(self, unknown: list, message: str | None = None):
        self.unknown = unknown
        super().__init__(message or f"unknown item id(s): {unknown[:10]}{' …' if len(unknown) > 10 else ''}")

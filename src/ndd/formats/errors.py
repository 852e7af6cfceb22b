"""The errors of :mod:`ndd.formats`: every message is one line and starts with the file name."""

from __future__ import annotations

__all__ = ["FormatError", "MissingFileError"]


class FormatError(ValueError):
    """A file that cannot be read as the format asked for; the message starts with the file name."""


class MissingFileError(FormatError, FileNotFoundError):
    """The file does not exist (also a :class:`FileNotFoundError`)."""

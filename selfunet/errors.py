"""The one exception type of the library.

Library code raises :class:`SelfUNetError` with a message that names the file, the case or field
and the fix; only the CLI turns it into a printed message and an exit code, so a user never sees
a Python traceback for bad input.
"""


class SelfUNetError(Exception):
    """A problem the user can fix (bad data, missing artifact, bad option)."""


#: the most characters of a user's value that a message quotes (a megabyte key must not flood a terminal).
QUOTE_LIMIT = 200


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with the full length noted."""
    return clip(repr(value), limit)


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with the full length noted when it was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"

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


def os_error_message(exc: OSError) -> str:
    """A file-system error as a message that names the path and the fix (never a traceback).

    A full disk gets its own wording: every artifact is written atomically, so what was finished
    is intact and a rerun after freeing space resumes.
    """
    import errno

    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{clip(str(where))}: no space left on the device ({reason}); free some space (or use a folder on "
                "another disk) and rerun the same command: finished results are kept and it resumes.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{clip(str(where))}: {reason}; make the folder writable for this user or choose another one."
    return f"{clip(str(where))}: {reason}; check the path, its permissions and the disk."

"""The one exception type of the library.

Library code raises :class:`SelfUNetError` with a message that names the file, the case or field
and the fix; only the CLI turns it into a printed message and an exit code, so a user never sees
a Python traceback for bad input.
"""


class SelfUNetError(Exception):
    """A problem the user can fix (bad data, missing artifact, bad option)."""

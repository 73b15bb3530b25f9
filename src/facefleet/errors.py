"""The one error type users see: its message is printed as a single line, never a traceback."""


class FacefleetError(Exception):
    """A user-facing failure: bad input, missing file, invalid configuration."""

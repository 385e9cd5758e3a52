"""Errors that reach the user: each says what went wrong and what to do about it."""


class SdcpuError(Exception):
    """A problem with the user's input or files; the CLI prints it and exits with code 2."""


class SdcpuNotice(UserWarning):
    """Something the user should know, not a fault (the CLI prints it as a note)."""

"""The one exception type users see: the CLI prints its message as a single line."""


class SealignError(Exception):
    """Bad input or an unusable environment, reported before any work is done."""

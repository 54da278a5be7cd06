"""The one error type users see: a single sentence naming the input and the fix."""


class FaslandError(Exception):
    """Bad input or state the user can fix; the CLI prints it without a traceback and exits 2."""

"""The one exception family the CLI turns into a one-line error and exit code 2."""


class VramplanError(ValueError):
    """Bad input or an impossible request, with a message fit to show a user as one line."""

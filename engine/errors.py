"""The one exception type for mistakes a user can cause; the CLI prints it as one line."""


class UserError(Exception):
    """Bad input, missing or corrupt model folder: shown as `error: <message>`, exit code 2."""

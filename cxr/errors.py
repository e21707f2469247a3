"""The one error type a user sees: its message is printed as a single line and the CLI exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a path, a setting, a dataset layout); the message names what is wrong."""

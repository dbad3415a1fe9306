"""The one exception type for bad user input; the CLI prints its message on one line."""


class InputError(ValueError):
    """Input that cannot be used as given: names the thing (file, line, option) and the problem."""

"""The one exception type for bad user input; the CLI prints its message on one line."""


class InputError(ValueError):
    """Input that cannot be used as given: names the thing (file, line, option) and the problem."""


class FrameError(InputError):
    """A frame of a sequence that cannot be read (missing, empty, truncated, damaged): that
    sequence fails, the others go on."""


class NotApplicable(InputError):
    """A transform asked for something this model cannot have (a Tucker-2 MAC target below
    what its eligible layers can save): the model is fine, the rung does not apply to it."""


def first_line(error: BaseException) -> str:
    """An exception's first non-blank line (or its type's name), for one-line reasons."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__

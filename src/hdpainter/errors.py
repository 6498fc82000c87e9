"""The one exception type for user mistakes: front-ends print its message on one line and exit non-zero."""


class HDPainterError(ValueError):
    """Bad input, an unknown or unreachable model: something the user can fix."""

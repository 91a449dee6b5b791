"""The one error type for bad user input.

Every message is one line that names the bad value and says what is accepted; the CLI prints it and exits 2,
the pytest plugin turns it into a usage error.
"""


class PqqpError(ValueError):
    """Bad input: a recipe, a method parameter, a model path, a corpus, a window size."""

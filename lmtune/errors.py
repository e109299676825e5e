"""Errors that lmtune reports to the user as one line and exit code 2."""


class InputError(ValueError):
    """Bad user input: names the field and what is allowed.

    The CLI prints ``error: <field>: <message>`` and exits with code 2; nothing is written to
    storage before the input has been validated.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class TrialFailed(RuntimeError):
    """A trial that cannot produce a score (NaN, divergence, out of memory).

    The objective lets it propagate so Optuna stores the trial as FAIL with this reason.
    """


class NoResult(RuntimeError):
    """A search that ended without any usable result (every trial failed); the CLI prints it as one line
    ``error: <field>: ...`` and exits with code 1: the input was valid, the runs were not."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

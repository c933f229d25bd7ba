"""The one exception type users see: what went wrong and how to fix it, no traceback."""


class ModelyardError(Exception):
    """A problem with the user's input or environment, reported as a short message.

    `hint` says how to fix it; the CLI prints both and exits with `exit_code`.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class DataRejected(ModelyardError):
    """Data that cannot make a model, found by validation or by a later stage (exit code 3)."""

    exit_code = 3

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service stop, a cancelled CI job), raised at the next safe point (an epoch's
    metrics about to be logged) so it unwinds as Ctrl-C does: open MLflow runs are ended and
    no half-written output is left. Raised from inside a library call instead, it could
    leave that library's own state (a database session) broken on the way out."""


_termination_requested = False


def request_termination(signum: int, frame: object) -> None:
    """The SIGTERM handler: ask the command to stop at its next safe point."""
    global _termination_requested
    _termination_requested = True


def stop_if_terminated() -> None:
    """Raise Terminated once SIGTERM has arrived."""
    if _termination_requested:
        raise Terminated()

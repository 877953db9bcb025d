"""The one exception type that is shown to users as a one-line message instead of a traceback."""


class UserError(Exception):
    """An error caused by input or environment that the user can fix.

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code

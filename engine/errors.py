"""The one exception type for mistakes a user can fix (a config typo, a missing file).

Entry points catch `UserError` and print its message alone, without a traceback, then
exit with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the input, whose message says what was wrong and what to do."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""

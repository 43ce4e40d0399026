"""One exception type for every problem a user can fix.

The CLI prints `CnnlabError` as a single line (what is wrong and how to fix it) and exits
with status 2; anything else is a bug and keeps its traceback.
"""


class CnnlabError(Exception):
    """A problem with the user's input or environment, stated with its fix."""

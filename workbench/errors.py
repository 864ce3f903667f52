"""Errors a user can cause. Each message says what was wrong and what to do."""


class WorkbenchError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class OfflineError(WorkbenchError):
    """Something needs the network (a model hub, a dataset hub) and none is reachable."""

"""One exception type for every dataset problem, with a message a user can act on."""


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or malformed; the message names the file and what was expected."""

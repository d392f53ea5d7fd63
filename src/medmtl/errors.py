"""The errors a user can act on from their message alone, and how a run reports them.

Every class here is a :class:`UserError`: the entry points print its message as one sentence,
write it into the run's ``failure.json`` and exit with its ``exit_code`` -- no stack trace
(``HYDRA_FULL_ERROR=1`` shows it). Anything else is a bug and keeps its traceback.

=================  ====  =========================================================
class              exit  raised for
=================  ====  =========================================================
ConfigError        2     an option with an impossible value or combination
DatasetError       2     a missing, incomplete or malformed dataset file
WeightsNotFound    2     a pretrained weights file that is not on this machine
CheckpointError    2     a checkpoint that is missing, truncated, foreign, of another
                         model, or that holds code (checkpoints are data only)
RunFolderConflict  2     a run or sweep folder that holds another configuration or is
                         in use by another process
StorageError       2     a folder that cannot be written (full disk, no permission, a
                         file where a folder belongs)
NonFiniteError     3     a loss, gradient, weight or prediction that is NaN or infinite
=================  ====  =========================================================
"""

from __future__ import annotations

import re

#: exit code of a run stopped by a configuration or data error
USER_ERROR_EXIT = 2
#: exit code of a run stopped because training produced non-finite values
NONFINITE_EXIT = 3


class UserError(Exception):
    """Base class: the message names what is wrong and what to do."""

    exit_code = USER_ERROR_EXIT
    kind = "user error"


class ConfigError(UserError, ValueError):
    """An option with an impossible value, or options that do not go together."""

    kind = "configuration error"


class DatasetError(UserError, RuntimeError):
    """A dataset is missing, incomplete or malformed; the message names the file and what was expected."""

    kind = "data error"


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Which weights file, where it was looked for, and how to skip it."""

    kind = "missing weights"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, truncated, foreign, mismatched, or holding code."""

    kind = "checkpoint error"


class RunFolderConflict(UserError):
    """A run or sweep folder holds another configuration's run, or another process is writing it."""

    kind = "run folder conflict"


class StorageError(UserError, OSError):
    """A file or folder the run must write cannot be written: the disk is full, permission is
    denied, or a file stands where a folder belongs."""

    kind = "storage error"


class NonFiniteError(UserError):
    """Training produced a NaN or an infinity (``optim.nonfinite``)."""

    exit_code = NONFINITE_EXIT
    kind = "non-finite values"


def find_user_error(error: BaseException | None) -> UserError | None:
    """The first :class:`UserError` in ``error``'s chain of causes (Hydra's ``InstantiationException``
    and Lightning wrap the errors raised in constructors and hooks), or None.

    A ``TypeError`` about a constructor's arguments, raised while Hydra instantiates a config node
    (an option the class does not take, or one it needs), is a configuration error too.
    """
    seen: set[int] = set()
    outer = error
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError):
            return error
        if _is_argument_error(error) and _is_instantiation_error(outer):
            # Hydra writes the cause on the line after "Error in call to target 'X':"
            head = _first_line(str(outer))
            return ConfigError(head if str(error) in head else f"{head.rstrip(':')}: {error}")
        error = error.__cause__ or error.__context__
    return None


def _is_instantiation_error(error: BaseException | None) -> bool:
    return type(error).__name__ == "InstantiationException"


def _is_argument_error(error: BaseException) -> bool:
    return isinstance(error, TypeError) and bool(
        re.search(r"unexpected keyword argument|missing \d+ required|takes \d+ positional", str(error))
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def one_sentence(error: BaseException) -> str:
    """The message of ``error`` without the traceback text a DataLoader worker wraps around it.

    PyTorch re-raises a worker's exception as ``Caught X in DataLoader worker process N.
    Original Traceback ...``, whose last line is ``module.X: <message>``.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        name = type(error).__name__
        for line in reversed(text.splitlines()):
            head, _, message = line.partition(": ")
            if head.endswith(name) and message:
                return message.strip()
    return text

"""The few kinds of failure a trial or a spec can have.

Bad user input is a `ConfigError` (a ValueError naming the field and what is allowed);
the CLI turns it into exit code 2. A trial that diverges is not an exception but a
status in its record (see `workers.training.train`), and so is a metric that cannot be computed
on one model (`workers.jobs.trial`). Of the exceptions a job raises, only the `transient`
ones are worth another attempt: the others come from the job's inputs and would repeat.
"""


class ConfigError(ValueError):
    """A spec or trial config value that is not allowed; `field` names the key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StorageError(OSError):
    """The sweep storage cannot be written or read (permissions, full disk, bad URI)."""


class CheckpointError(StorageError):
    """A checkpoint file exists but cannot be loaded (truncated, garbled): names the file."""


class StorageFull(StorageError):
    """The sweep storage stopped taking writes during a run (a full disk, a lost mount):
    not bad input, so the command exits 1, saying what was recorded."""


# Names of exceptions from libraries this module does not import (torch), by class name.
_TRANSIENT_NAMES = ("OutOfMemoryError",)  # torch.cuda.OutOfMemoryError: another job may hold the memory


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` may not happen again on another attempt: the storage, the network,
    the machine's memory. Anything else (a LinAlgError, an assertion, a bad shape) comes
    from the same inputs every time, so a retry would only repeat it."""
    return isinstance(exc, (OSError, MemoryError)) or type(exc).__name__ in _TRANSIENT_NAMES

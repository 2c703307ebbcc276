"""Error types of the training app: bad configuration, a failed run, a failed checkpoint write, a stall,
and preemption."""


class ConfigError(ValueError):
    """A flag value (or combination) that cannot work; the message names the flag and the fix.

    ``main()`` turns it into a one-line error and a -1 return; the command line exits with code 2.
    """


class TrainingError(RuntimeError):
    """Training had to stop (e.g. too many non-finite losses in a row); checkpoints stay intact."""


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (disk full, quota, permission...); the previous one is intact."""

    def __init__(self, path: str, cause: OSError) -> None:
        import errno

        name = errno.errorcode.get(cause.errno, "") if cause.errno is not None else ""
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(
            f"cannot write checkpoint {path}: {reason}{f' ({name})' if name else ''}. The previous checkpoint "
            "is intact; free space or fix permissions, then continue with --resume latest.")
        self.path = path
        self.cause = cause


class StallError(BaseException):
    """The training loop waited too long for data or for a peer (``--data-stall-timeout``).

    A ``BaseException`` so that it passes through the data code, which turns every ``Exception``
    raised while reading a sample into a skipped bad sample.
    """


class Preempted(BaseException):
    """SIGTERM/SIGUSR1 stopped the run after a checkpoint was written; exit with ``exit_code``."""

    def __init__(self, signum: int, global_step: int) -> None:
        import signal

        super().__init__(f"preempted by {signal.Signals(signum).name} at global step {global_step}")
        self.signum = signum
        self.global_step = global_step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

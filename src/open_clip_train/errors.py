"""Error types of the training app: bad configuration versus a failed training run."""


class ConfigError(ValueError):
    """A flag value (or combination) that cannot work; the message names the flag and the fix.

    ``main()`` turns it into a one-line error and a -1 return; the command line exits with code 2.
    """


class TrainingError(RuntimeError):
    """Training had to stop (e.g. too many non-finite losses in a row); checkpoints stay intact."""

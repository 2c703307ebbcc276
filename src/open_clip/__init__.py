"""libreclip: a from-scratch, drop-in compatible implementation of OpenCLIP 3.3.0."""

from .version import __version__  # noqa: F401

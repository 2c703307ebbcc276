"""``python -m open_clip.export``: see ``open_clip.export.cli``."""

import sys

from .cli import main

sys.exit(main())

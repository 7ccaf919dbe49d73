"""``python -m streaming.simulator``: run the feed simulator without Django (same options as the manage command)."""

import sys

from .cli import main

sys.exit(main())

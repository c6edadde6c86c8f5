"""`python -m services up | down | status | dvc-remote [--repo PATH]`: see services.cli."""

import sys

from services.cli import main

sys.exit(main())

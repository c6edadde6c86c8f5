"""`python -m lineage ...`: see lineage.cli."""

import sys

from lineage.cli import main

sys.exit(main())

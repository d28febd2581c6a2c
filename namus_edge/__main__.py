"""``python -m namus_edge``: the same entry point as the ``namus-edge`` console script."""

import sys

from namus_edge.cli import main

sys.exit(main())

"""``python -m dsfc ...``: the same command line as the ``dsfc`` script (which needs the package installed)."""

import sys

from .cli import main

sys.exit(main())

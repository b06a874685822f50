"""``python -m dsfc ...``: the same CLI as the ``dsfc`` script, for a checkout that is not pip-installed."""

import sys

from dsfc.cli import main

sys.exit(main())

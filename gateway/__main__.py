"""``python -m gateway`` is the ``streetgate`` command."""

import sys

from gateway.cli import main

sys.exit(main())

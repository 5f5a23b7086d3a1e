"""``python -m conformance``: the harness's command line (see ``conformance.cli``)."""

import sys

from .cli import main

sys.exit(main())

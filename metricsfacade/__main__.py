"""``python -m metricsfacade``: the same as the ``metricsfacade`` command."""

import sys

from metricsfacade.cli import main

sys.exit(main())

"""``python -m wvq_kernels.cli``: the ``wvq`` command without its console script."""

import sys

from wvq_kernels.cli import main

sys.exit(main())

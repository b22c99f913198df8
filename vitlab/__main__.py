"""``python -m vitlab``: the same command line as the ``vitlab`` script (see ``vitlab.cli``)."""

import sys

from vitlab.cli import main

sys.exit(main())

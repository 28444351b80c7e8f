"""``python -m extproc``: the same as the ``model-router`` command."""

import sys

from extproc.cli import main

sys.exit(main())

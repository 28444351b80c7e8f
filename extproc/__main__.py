"""``python -m extproc`` and the ``model-router`` console script.

Kept free of imports: ``serve`` ignores ``SIGHUP`` here, before importing the CLI (≈0.1 s), so a reload signal sent
as the process starts (a config reloader beside a restarted container) does not end it.
"""

import signal
import sys


def run() -> int:
    """Entry point of the ``model-router`` console script."""
    if sys.argv[1:2] == ["serve"] and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from extproc.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())

"""``python -m sharpgen``: the ``sharpgen`` command line (:func:`sharpgen.cli.main`)."""

import sys

from sharpgen.cli import main

if __name__ == "__main__":
    sys.exit(main())

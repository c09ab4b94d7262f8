"""``python -m sparkann.cli``: the same as the ``sparkann`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m vizkit <command>``: see ``vizkit/cli/__init__.py``."""

import sys

from vizkit.cli import main

if __name__ == "__main__":
    sys.exit(main())

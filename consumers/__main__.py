"""`python -m consumers STEP [options]`: the same as `pm run consumer STEP [options]`."""

import sys

from pm.cli import main

sys.exit(main(["run", "consumer", *sys.argv[1:]]))

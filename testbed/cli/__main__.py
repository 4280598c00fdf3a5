"""`python -m testbed.cli ...`: the same as `testbed ...`."""

import sys

from testbed.cli import main

sys.exit(main())

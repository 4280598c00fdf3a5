"""`python -m testbed.study.heartbeat ...`: the same as `testbed study heartbeat ...`."""

import sys

from testbed.study.heartbeat.cli import _main

sys.exit(_main())

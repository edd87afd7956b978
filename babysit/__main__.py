"""`python -m babysit ...` is the `babysit` command."""

import sys

from babysit.monitor.cli import main

sys.exit(main())

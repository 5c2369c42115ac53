"""``python -m deploycam.cli``."""

import sys

from deploycam.cli import main

sys.exit(main())

"""``python -m explainer.cli``."""

import sys

from explainer.cli import main

sys.exit(main())

"""``python -m ociflow``."""

import sys

from ociflow.cli import main

sys.exit(main())

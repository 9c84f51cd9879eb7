"""``python -m nomad_pginit``."""

import sys

from nomad_pginit.cli import main

sys.exit(main())

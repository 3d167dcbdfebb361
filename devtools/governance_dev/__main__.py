from __future__ import annotations

import sys

from governance_dev.cli import main

sys.exit(main())

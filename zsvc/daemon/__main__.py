"""``python -m zsvc.daemon``: the daemon without the CLI's imports (smaller and faster)."""

import sys

from zsvc.daemon.main import main

sys.exit(main())

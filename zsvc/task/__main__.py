"""``python -m zsvc.task``: the task host entry point."""

import sys

from zsvc.task.host import main

sys.exit(main())

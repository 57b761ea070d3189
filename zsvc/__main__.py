"""``python -m zsvc``: the same as the ``zsvc`` command."""

from zsvc.cli import main

main()

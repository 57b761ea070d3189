"""Task services that come with zsvc, in the seed's layout (``<instance>/Service<instance>.py``).

The context loader points a ``TaskService instance="Monitor"`` here unless
the context's own task location has a ``Monitor`` package.
"""

from pathlib import Path

BUILTIN_LOCATION = Path(__file__).resolve().parent

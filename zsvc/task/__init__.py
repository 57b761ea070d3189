"""The task side of zsvc: the API task authors use and the host process that runs it."""

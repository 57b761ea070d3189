"""A task package named like a standard module the task host has imported already."""

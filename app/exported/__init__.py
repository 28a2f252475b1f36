"""Files that `python -m app export` copies into an exported model folder (not imported here)."""

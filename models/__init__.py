"""Keras models of tagrecall (the multi-task tag model lands with its own issue)."""

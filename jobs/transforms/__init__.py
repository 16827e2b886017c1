"""Pure DataFrame -> DataFrame transforms shared by several steps: no I/O, no session, no
configuration lookups. Steps (jobs/<step>.py) read partitions, call these, and write."""

"""The `trunk8` command: the composition root that wires the services into processes."""

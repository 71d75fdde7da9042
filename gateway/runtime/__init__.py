"""Process plumbing: the composition root, the CLI, the supervisor, health, metrics, logs,
configuration and the clock."""

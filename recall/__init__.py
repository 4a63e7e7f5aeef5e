"""The `recall` command: one entry point for the training, index and service programs."""

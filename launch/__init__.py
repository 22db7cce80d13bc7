"""Launching runs: absl entry point, configs and their validation, the training loop and its host-side sinks."""

"""Subprocess entry points (concurrency and crash tests) and the helpers they share."""

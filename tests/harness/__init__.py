"""Starts the real components of the Skynet stack on loopback for tests, benchmarks and the demo."""

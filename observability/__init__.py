"""Logging, usage metering and (later) tracing and metrics. Imported by every other package."""

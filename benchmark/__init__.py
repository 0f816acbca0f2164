"""Runtimes, the latency protocol, quality and size measurement, and the report card."""

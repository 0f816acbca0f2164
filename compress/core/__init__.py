"""The lowest layer: errors, the registry type, atomic IO, progress, the run folder, tasks.

Imports nothing of kdtool."""

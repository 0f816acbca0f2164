"""Structured pruning (torch-pruning DepGraph) of the distilled student, with recovery training."""

"""Datasets: sources registered by name (digits, folders, CSV, audio, synthetic), WAV IO, loaders, folds."""

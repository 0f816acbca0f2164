"""Exporters, one module per format; target presets; parity checks; manifests."""

"""The package version, in a module of its own: every layer may record it (run records, export
provenance) without importing the package root, which sits above everything."""

__version__ = "0.1.0"

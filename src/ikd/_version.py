"""The package version, apart from the package top so low modules can read it without a cycle."""

__version__ = "0.1.0"

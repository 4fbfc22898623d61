"""The package version, in core so every layer can name it without importing the API (rxte_hpc/__init__)."""

__version__ = "0.2.0"

"""rxte-hpc: re-extract years of RXTE PCA observations into one light curve on an HPC cluster."""

__version__ = "0.1.0"

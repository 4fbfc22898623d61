"""`python -m rxte_hpc ...` is the same as the `rxte-hpc` command."""
import sys

from rxte_hpc.cli import main

if __name__ == "__main__":  # a spawned process that imports this module must not run a command
    sys.exit(main())

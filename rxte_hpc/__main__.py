"""`python -m rxte_hpc ...` is the same as the `rxte-hpc` command."""
import sys

from rxte_hpc.cli import main

sys.exit(main())

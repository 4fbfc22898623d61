"""`python -m rxte_hpc ...` is the same as the `rxte-hpc` command."""
import sys

from .cli import main

sys.exit(main())

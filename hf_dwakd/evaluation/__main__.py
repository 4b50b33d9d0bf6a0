"""`python -m hf_dwakd.evaluation ...` runs the `evaluate` sub-command."""

from .command import main

main()

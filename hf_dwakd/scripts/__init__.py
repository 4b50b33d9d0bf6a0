"""The command-line scripts, in TRL's script shape: `make_parser()` and `main(...)` per script."""

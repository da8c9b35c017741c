"""`python -m bench`: the same entry point as the `kcv-bench` script."""

from bench.cli import main

main()

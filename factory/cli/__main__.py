"""`python -m factory.cli` runs the command line (tests use it as a subprocess)."""

from factory.cli import main

main()

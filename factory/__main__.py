"""`python -m factory` runs the command line."""

from factory.cli import main

main()

"""`python -m ferlite` is the `ferlite` command."""

from ferlite.cli import main

main()

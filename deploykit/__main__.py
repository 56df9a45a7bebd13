"""`python -m deploykit` == the `deploykit` command."""

from .cli import main

main()

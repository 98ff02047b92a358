"""`python -m mai.cli`, the same as the `mai` command."""

from mai.cli import main

main()

"""`python -m runtime` runs the personae command line."""

from runtime.cli import cli

cli()

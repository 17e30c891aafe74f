"""`python -m lcmsquant` is the `lcmsquant` command."""

from lcmsquant.cli import app

app(prog_name="lcmsquant")

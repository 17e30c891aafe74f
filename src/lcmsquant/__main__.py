"""`python -m lcmsquant` is the `lcmsquant` command."""

from lcmsquant.cli import command_line

if __name__ == "__main__":
    command_line()

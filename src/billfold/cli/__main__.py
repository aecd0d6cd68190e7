"""`python -m billfold.cli`: the `billfold` command."""

from billfold.cli.main import app

if __name__ == "__main__":
    app()

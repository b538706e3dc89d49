"""`python -m taskraft ...` runs the `taskraft` command (see taskraft.cli)."""

from taskraft.cli import entry_point

if __name__ == "__main__":
    entry_point()

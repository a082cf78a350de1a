"""``python -m augexpand`` runs the CLI."""

from augexpand.cli import main

if __name__ == "__main__":
    main()

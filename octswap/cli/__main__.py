"""``python -m octswap.cli`` (as ``torchrun ... -m octswap.cli heal ...`` runs it)."""

from octswap.cli.app import main

if __name__ == "__main__":
    main()

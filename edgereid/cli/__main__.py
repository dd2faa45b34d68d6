"""`python -m edgereid.cli ...`: the `edgereid` command, as torchrun starts it (`torchrun ... -m edgereid.cli train`)."""
from edgereid.cli.main import main

if __name__ == "__main__":
    main()

"""The `edgereid` command line; each command lives in its own module and loads on use."""

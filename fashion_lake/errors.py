"""The one error type users see: its message names what is wrong and how to fix it."""


class FashionLakeError(Exception):
    """Bad input (URL, dataset, file, config value, download): reported as one line, exit 2."""

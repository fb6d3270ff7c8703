"""Command-line interface (click). Commands only parse, validate into a config and call the library."""

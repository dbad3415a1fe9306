"""One module per published experiment; each returns data the CLI prints and saves."""

"""Use cases, one module per resource; the CLI and API are thin layers over these."""

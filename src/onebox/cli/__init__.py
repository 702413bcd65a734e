"""The ``onebox`` command line: thin Typer commands over the services."""

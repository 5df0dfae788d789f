"""The edgekit command line: one module per command group; ``edgekit.cli.main:main`` is the entry point."""

"""One module per ``riskmon`` subcommand, each with ``register(subparsers)``."""

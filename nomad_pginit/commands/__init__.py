"""One module per subcommand, each exposing ``register(subparsers, common)`` and ``main(args)``."""

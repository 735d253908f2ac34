"""One module per `vitlab` sub-command: add_arguments(parser) and run(args) -> exit code."""

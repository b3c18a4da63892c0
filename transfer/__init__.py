"""Transfer evaluators (detection fine-tuning), weight export, suites, tables and the CLI."""

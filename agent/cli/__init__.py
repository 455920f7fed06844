"""The `edge-agent` command: `main` parses and dispatches, one module per command group."""

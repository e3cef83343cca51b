"""The `superweight` command line: wiring only; the work happens in the public Python API."""

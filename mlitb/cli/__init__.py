"""The `mlitb` command line."""

"""Client-level differential privacy for device-data projects (issue 26)."""

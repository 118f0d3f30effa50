"""Native Python workers (PyTorch, CPU or GPU): the same protocol as a browser.

Imports `mlitb.protocol`, `mlitb.data.wire` and `mlitb.model`; never master code.
"""

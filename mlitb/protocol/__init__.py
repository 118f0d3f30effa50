"""The master <-> worker wire protocol, shared by the master, native workers and (as the
document docs/protocol.md) the browser client. Imports nothing from the master or
workers: both sides depend on it, it depends on neither.
"""

PROTOCOL_VERSION = 2  # what this side sends
SUPPORTED_VERSIONS = (1, 2)  # what it accepts: version-1 workers keep working

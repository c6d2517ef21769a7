"""The audit log of security events: who signed in, changed a server, connected, created a key.

Events carry names (of fields, servers, keys, accounts), never values: `log.record()` takes no
free text, so no secret can reach a row.
"""

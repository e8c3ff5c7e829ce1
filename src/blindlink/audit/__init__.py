"""The server's tamper-evident audit log: a hash chain of Ed25519-signed entries.

`chain` appends and reads entries, `verify` checks an export and parties' receipts, `export`
writes and reads exports (JSON Lines).
"""

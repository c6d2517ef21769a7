"""mailgate's SQLite database backend: Django's, with short waits for the write lock and a fair
turn for writers after a long write.

SQLite admits one writer at a time. A writer that finds the database locked waits in SQLite's busy
handler, which sleeps 1, 2, 5, 10, ... ms between tries: a relay's INSERT that met a worker's
commit of half a millisecond waited a whole millisecond or three, with each message's 250 waiting
on it. With every transaction taking the write lock at its BEGIN (transaction_mode IMMEDIATE, as
mailgate configures it), a statement can meet the lock only outside a transaction (a statement of
its own, or the BEGIN), where trying it again is safe: such a statement is tried again after
pauses of 0.1 ms doubling up to 2 ms, for up to the connection's timeout, instead of SQLite's
handler (executemany, whose parameters may be an iterator, still waits in SQLite's handler).

A process that starts its next write transaction the moment it commits a long one would win every
race, and a waiting worker could wait for many of those transactions in a row. So after holding
the write lock for longer than LONG_WRITE, a connection pauses POLITE_PAUSE before its next write
transaction: long enough for every waiting writer to take its turn. Short transactions (the
worker's per-message writes) never pause.
"""

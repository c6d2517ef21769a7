"""mailgate's SQLite database backend: Django's, with a fair turn for writers after a long write.

SQLite admits one writer at a time, and a writer that finds the database locked polls (its busy
handler sleeps up to 100 ms between tries). A process that starts its next write transaction the
moment it commits a long one would win every race, and a waiting worker could wait for many of
those transactions in a row. So after holding the write lock for longer than LONG_WRITE, a
connection pauses POLITE_PAUSE before its next write transaction: long enough for every waiting
writer to take its turn. Short transactions (the worker's per-message writes) never pause.
"""

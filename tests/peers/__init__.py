"""Independent real mail servers (Postfix, Dovecot) started from Python for tests, on loopback."""

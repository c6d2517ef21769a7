"""Diagnostics: the connection test of a mail server (and later doctor, health checks)."""

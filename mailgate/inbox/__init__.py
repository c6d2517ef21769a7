"""Incoming mail: fetched over IMAP / POP3 exactly once, stored durably, handed to the application."""

"""Signals about mail servers that lower layers send and upper layers (the outbox) listen to."""

from django.dispatch import Signal

# "Mail may flow again for this server": a grant was (re)connected or refreshed after a failure, a
# new client secret was saved, or a connection test passed. Sent with `server=<MailServer>`; the
# outbox answers by releasing the server's held mail.
mail_may_flow = Signal()

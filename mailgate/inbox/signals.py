"""`message_received`: sent in the worker's process for each stored message, before its webhook.

Receivers get `message` (an IncomingMessage). A receiver that raises counts as a failed hand-off:
the message is offered again with back-off, and goes to Quarantine when it keeps failing.
"""

from django.dispatch import Signal

message_received = Signal()

"""The SMTP relay: applications that only speak SMTP submit mail here (STARTTLS, AUTH with an API key
of scope `send`); each message is checked and committed to the outbox by `mailgate.outbox.enqueue`,
the path the REST API takes, before the relay answers 250. See docs/relay.md."""

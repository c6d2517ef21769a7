"""Mail addresses are checked for syntax, never for public deliverability.

A company's own server sends to and from internal names (corp.local, host.test, mailhost), and a
mailbox may have a UTF-8 local part (jörg@corp.local, RFC 6531). email_validator refuses the
special-use names unless they are taken off its list, which is its documented way to accept them;
.invalid, .arpa and .onion stay refused. Every layer that checks an address (a server's Username,
Send As and From Filter, a message's addresses) goes through `check_address`.
"""

from __future__ import annotations

import email_validator
from email_validator import EmailNotValidError, ValidatedEmail, validate_email

__all__ = ["EmailNotValidError", "check_address", "is_address"]

for _name in ("local", "localhost", "test"):
    if _name in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(_name)


def check_address(address: str) -> ValidatedEmail:
    """The address checked (IDN domain in its ASCII form available); EmailNotValidError says why not."""
    return validate_email(
        address, check_deliverability=False, allow_smtputf8=True, globally_deliverable=False
    )


def is_address(address: str) -> bool:
    try:
        check_address(address)
    except EmailNotValidError:
        return False
    return True

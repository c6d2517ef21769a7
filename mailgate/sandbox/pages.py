"""HTML of the sandbox's sign-in, consent and error pages (Microsoft-like and Google-like), escaped."""

from __future__ import annotations

import datetime
from html import escape
from typing import Any

_STYLE = """
body{font-family:"Segoe UI",Roboto,Arial,sans-serif;background:#f2f2f2;margin:0}
.box{max-width:440px;margin:48px auto;background:#fff;padding:44px;box-shadow:0 2px 6px rgba(0,0,0,.2)}
.brand{font-weight:600;color:#5e5e5e;margin-bottom:16px}
h1{font-size:24px;font-weight:600;margin:0 0 16px}
label{display:block;margin:12px 0 4px;font-size:15px}
input[type=text],input[type=email],input[type=password]{width:100%;box-sizing:border-box;padding:6px 4px;
 border:0;border-bottom:1px solid #666;font-size:15px}
.buttons{margin-top:24px;text-align:right}
button{min-width:108px;padding:6px 12px;font-size:15px;border:0;margin-left:8px;cursor:pointer}
button.primary{background:#0067b8;color:#fff}
button.secondary{background:#ccc;color:#000}
.error{color:#e81123;margin:8px 0}
.small{font-size:13px;color:#555;white-space:pre-wrap}
ul.perms{padding-left:20px} ul.perms li{margin:6px 0}
.sandbox{font-size:12px;color:#999;margin-top:24px}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #ddd;padding:4px;text-align:left;font-size:13px}
.wide{max-width:960px}
"""

# What the consent page says for each permission, in the portal's words.
# Reference: https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
PERMISSION_WORDS = {
    "SMTP.Send": "Send email as you",
    "IMAP.AccessAsUser.All": "Read and write access to your mail",
    "POP.AccessAsUser.All": "Read and write access to your mail",
    "EWS.AccessAsUser.All": "Access your mailboxes",
    "User.Read": "Sign you in and read your profile",
    "Mail.Send": "Send mail as you",
    "Mail.Read": "Read your mail",
    "Mail.ReadWrite": "Read and write access to your mail",
    "openid": "Sign you in",
    "profile": "View your basic profile",
    "email": "View your email address",
    "offline_access": "Maintain access to data you have given it access to",
}


def page(title: str, body: str, *, brand: str = "Microsoft", wide: bool = False) -> str:
    """A complete HTML document around `body` (already escaped)."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<main class='box{' wide' if wide else ''}'><div class='brand'>{escape(brand)}"
        " <span class='sandbox'>(mailgate sandbox)</span></div>"
        f"{body}</main></body></html>"
    )


def hidden(fields: dict[str, str]) -> str:
    return "".join(
        f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>" for k, v in fields.items()
    )


def sign_in(
    *,
    action: str,
    ctx: str,
    username: str,
    error: str = "",
    app_name: str,
    brand: str = "Microsoft",
    button: str = "Sign in",
) -> str:
    error_html = f"<div class='error' role='alert'>{escape(error)}</div>" if error else ""
    return page(
        "Sign in to your account",
        f"<h1>Sign in</h1><p>to continue to {escape(app_name)}</p>{error_html}"
        f"<form method='post' action='{escape(action)}'>{hidden({'ctx': ctx})}"
        "<label for='username'>Email</label>"
        f"<input type='email' id='username' name='username' value='{escape(username)}'"
        " autocomplete='username' required>"
        "<label for='password'>Password</label>"
        "<input type='password' id='password' name='password' autocomplete='current-password'>"
        f"<div class='buttons'><button class='primary' type='submit'>{escape(button)}</button></div>"
        "</form>",
        brand=brand,
    )


def consent(
    *,
    action: str,
    ctx: str,
    app_name: str,
    publisher: str,
    user: str,
    permissions: list[tuple[str, str]],
    brand: str = "Microsoft",
    accept: str = "Accept",
    heading: str = "Permissions requested",
) -> str:
    items = "".join(
        f"<li>{escape(words)} ({escape(name)})</li>" if name else f"<li>{escape(words)}</li>"
        for words, name in permissions
    )
    return page(
        heading,
        f"<div class='small'>{escape(user)}</div><h1>{escape(heading)}</h1>"
        f"<p><strong>{escape(app_name)}</strong><br><span class='small'>{escape(publisher)}</span></p>"
        f"<p>This app would like to:</p><ul class='perms'>{items}</ul>"
        "<p class='small'>Accepting these permissions means that you allow this app to use your data"
        " as specified in their terms of service and privacy statement.</p>"
        f"<form method='post' action='{escape(action)}'>{hidden({'ctx': ctx})}"
        "<div class='buttons'>"
        "<button class='secondary' type='submit' name='decision' value='cancel'>Cancel</button>"
        f"<button class='primary' type='submit' name='decision' value='accept'>{escape(accept)}</button>"
        "</div></form>",
        brand=brand,
    )


def aad_error(
    *, code: int, message: str, trace_id: str, correlation_id: str, timestamp: str
) -> str:
    """Entra's error page: shown instead of redirecting (bad client, redirect URI, tenant ...)."""
    return page(
        "Sign in to your account",
        "<h1>Sorry, but we're having trouble signing you in.</h1>"
        f"<p class='error' role='alert'>AADSTS{code}: {escape(message)}</p>"
        "<div class='small'>Troubleshooting details\n"
        f"Request Id: {escape(trace_id)}\nCorrelation Id: {escape(correlation_id)}\n"
        f"Timestamp: {escape(timestamp)}\nMessage: AADSTS{code}: {escape(message)}</div>",
    )


def google_error(*, error: str, message: str, status: int) -> str:
    return page(
        "Error",
        f"<h1>Access blocked: authorization error</h1><p class='error' role='alert'>{escape(message)}</p>"
        f"<p>Error {status}: {escape(error)}</p>",
        brand="Google",
    )


def form_post(action: str, fields: dict[str, str]) -> str:
    """response_mode=form_post: a page that POSTs the response to the redirect URI at once."""
    return (
        "<!doctype html><html><head><title>Working...</title></head>"
        "<body onload='document.forms[0].submit()'>"
        f"<form method='post' action='{escape(action)}'>{hidden(fields)}"
        "<noscript><button type='submit'>Continue</button></noscript></form></body></html>"
    )


def when(value: object) -> str:
    """An epoch time as "2026-03-02 09:00:05 UTC" (other values as they are)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def messages(rows: list[dict[str, Any]]) -> str:
    body = "".join(
        "<tr>"
        f"<td><a href='/sandbox/messages/{escape(str(m.get('id', '')))}'>{escape(str(m.get('id', '')))}</a></td>"
        f"<td>{escape(when(m.get('received_at', '')))}</td>"
        f"<td>{escape(str(m.get('mail_from', '')))}</td>"
        f"<td>{escape(', '.join(m.get('rcpt_tos', [])))}</td>"
        f"<td>{escape(str(m.get('subject', '')))}</td>"
        f"<td>{escape(str(m.get('authenticated_as', '')))}</td>"
        "</tr>"
        for m in rows
    )
    return page(
        "Sandbox messages",
        "<h1>Messages accepted by the sandbox SMTP server</h1>"
        "<table><tr><th>ID</th><th>Received</th><th>From</th><th>To</th><th>Subject</th>"
        f"<th>Authenticated as</th></tr>{body}</table>"
        + ("" if rows else "<p>No messages yet.</p>"),
        brand="mailgate sandbox",
        wide=True,
    )

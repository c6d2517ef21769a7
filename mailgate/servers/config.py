"""Configuration as code: servers as JSON without secrets, and importing them with the form's rules."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models, transaction

from mailgate.servers.forms import FORM_FIELDS, MailServerForm
from mailgate.servers.models import MailServer, split_folders
from mailgate.servers.validation import METHOD_FIELDS, SECRET_FIELDS, SECRET_LABELS

EXPORT_FIELDS: list[str] = list(FORM_FIELDS)
LIST_FIELDS = {"incoming_folders"}  # exported as a JSON list of strings
FORMAT_VERSION = 1


def export_server(server: MailServer) -> dict[str, Any]:
    """One server's settings in EXPORT_FIELDS order; secrets are never part of it."""
    out: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
        value = getattr(server, name)
        out[name] = value.isoformat() if isinstance(value, dt.date) else value
    out["incoming_folders"] = split_folders(server.incoming_folders)
    return out


def export_servers() -> dict[str, Any]:
    servers = sorted(MailServer.objects.all(), key=lambda s: s.name)
    return {"version": FORMAT_VERSION, "servers": [export_server(s) for s in servers]}


def _kind(name: str) -> str:
    f = MailServer._meta.get_field(name)
    if isinstance(f, models.BooleanField):
        return "bool"
    if isinstance(f, models.IntegerField):
        return "int"
    if isinstance(f, models.DateField):
        return "date"
    return "str"


KIND_WORDS = {
    "bool": "true or false",
    "int": "a whole number",
    "date": 'a date "YYYY-MM-DD" or null',
    "str": "a string",
}


def _type_problem(name: str, value: Any) -> str:
    if name in LIST_FIELDS:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ""
        return f"expected a list of strings, got {value!r}"
    kind = _kind(name)
    nullable = MailServer._meta.get_field(name).null
    if value is None:
        return "" if nullable or kind == "str" else f"expected {KIND_WORDS[kind]}, got null"
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "date": isinstance(value, str),
        "str": isinstance(value, str),
    }[kind]
    return "" if ok else f"expected {KIND_WORDS[kind]}, got {value!r}"


def _form_data(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: ("" if v is None else "\n".join(v) if isinstance(v, list) else v)
        for k, v in values.items()
    }


def _defaults() -> dict[str, Any]:
    fields = {f.name: f for f in MailServer._meta.concrete_fields}
    return {name: fields[name].get_default() for name in EXPORT_FIELDS}


@dataclass
class ImportReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def build_form(
    entry: dict[str, Any],
    existing: MailServer | None,
    secrets: dict[str, str] | None = None,
    *,
    require_secrets: bool = True,
) -> MailServerForm:
    """The console's form bound to these values over the existing server's (or the defaults)."""
    base = export_server(existing) if existing else _defaults()
    data = _form_data({**base, **entry, **(secrets or {})})
    return MailServerForm(data, instance=existing, require_secrets=require_secrets)


def form_problems(form: MailServerForm) -> dict[str, list[str]]:
    return {name: [str(m) for m in messages] for name, messages in form.errors.items()}


# Told where an import is: (what it does, servers done, servers in all), e.g. ("Checking", 3, 40).
ImportProgress = Callable[[str, int, int], None]


def import_servers(
    document: Any,
    secrets: dict[str, dict[str, str]] | None = None,
    *,
    dry_run: bool = False,
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Create or update servers by name; any error anywhere changes nothing. `progress` is told
    how far the checking, then the saving, has got before each server and when it is done."""
    report = ImportReport()
    tell: ImportProgress = progress or (lambda _step, _done, _total: None)
    secrets = secrets or {}
    if not isinstance(document, dict) or not isinstance(document.get("servers"), list):
        report.errors.append('$: expected an object {"version": 1, "servers": [...]}')
        return report
    if document.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        report.errors.append(f"version: only version {FORMAT_VERSION} is understood")
    unknown_top = sorted(set(document) - {"version", "servers"})
    for key in unknown_top:
        report.errors.append(f"{key}: unknown key (expected version, servers)")
    known = set(EXPORT_FIELDS)
    forms: list[tuple[str, MailServerForm, bool]] = []
    seen: dict[str, int] = {}
    entries = document["servers"]
    for i, entry in enumerate(entries):
        tell("Checking", i, len(entries))
        path = f"servers[{i}]"
        if not isinstance(entry, dict):
            report.errors.append(f"{path}: expected an object with the server's settings")
            continue
        problems = []
        for key in entry:
            if key in SECRET_FIELDS:
                problems.append(
                    f"{path}.{key}: secrets do not belong in the configuration file; "
                    "pass them with --secrets-file"
                )
            elif key not in known:
                problems.append(f"{path}.{key}: unknown setting")
            elif msg := _type_problem(key, entry[key]):
                problems.append(f"{path}.{key}: {msg}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{path}.name: every server needs a name (its Mail Server Description)")
        else:
            if name in seen:
                problems.append(f"{path}.name: {name!r} is also used by servers[{seen[name]}]")
            seen.setdefault(name, i)
        if problems:
            report.errors.extend(problems)
            continue
        assert isinstance(name, str)
        server_secrets = secrets.get(name, {})
        existing = MailServer.objects.filter(name=name).first()
        form = build_form(entry, existing, server_secrets, require_secrets=False)
        if not form.is_valid():
            for field_name, messages in form_problems(form).items():
                where = path if field_name == "__all__" else f"{path}.{field_name}"
                report.errors.extend(f"{where}: {m}" for m in messages)
            continue
        report.warnings.extend(f"{path}: {w}" for w in form.warnings)
        method = form.cleaned_data["auth_method"]
        for secret in SECRET_FIELDS:
            if secret in METHOD_FIELDS[method] and not (
                server_secrets.get(secret) or (existing and getattr(existing, secret))
            ):
                report.warnings.append(
                    f"{path}: {name!r} has no {SECRET_LABELS[secret]} yet: type it in the console, "
                    "or import again with --secrets-file"
                )
        forms.append((name, form, existing is None))
    tell("Checking", len(entries), len(entries))
    for name in secrets:
        if name not in seen:
            report.errors.append(f"secrets.{name}: no server of that name in the file")
    if report.errors or dry_run:
        return report
    with transaction.atomic():
        for i, (name, form, is_new) in enumerate(forms):
            tell("Saving", i, len(forms))
            form.save()
            (report.created if is_new else report.updated).append(name)
        tell("Saving", len(forms), len(forms))
    return report

"""Loaded with `-p tests.envsetup` before Django: fast, isolated settings for the test run."""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="mailgate-test-")
os.environ.setdefault("MAILGATE_HOME", _home)
os.environ.setdefault("MAILGATE_SECRET_KEY", "test-secret-key-" + "x" * 40)
# A fixed key so that encrypted values in one test process are readable in its helpers.
os.environ.setdefault("MAILGATE_ENCRYPTION_KEYS", "q0JX2Nm0oZ9bq4o0b9h6K3k7mX8WvQx3yY0s1n2b3c4=")
# Unset: the default public URL (http://127.0.0.1:8000), not one the console must be opened at.
os.environ.pop("MAILGATE_PUBLIC_URL", None)
for _name in ("MAILGATE_ADMIN_EMAIL", "MAILGATE_ADMIN_PASSWORD"):
    os.environ.pop(_name, None)

"""Django settings, all derived from the environment through mailgate.conf (README, "Configuration")."""

from __future__ import annotations

from urllib.parse import urlsplit

from mailgate import conf, logs

CONFIG = conf.load()

BASE_DIR = CONFIG.home
MAILGATE_HOME = CONFIG.home
MAILGATE_PUBLIC_URL = CONFIG.public_url
MAILGATE_ENCRYPTION_KEYS = CONFIG.encryption_keys
MAILGATE_MICROSOFT_LOGIN_URL = CONFIG.microsoft_login_url
MAILGATE_GOOGLE_AUTH_URL = CONFIG.google_auth_url
MAILGATE_GOOGLE_TOKEN_URL = CONFIG.google_token_url
MAILGATE_GOOGLE_REVOKE_URL = CONFIG.google_revoke_url

SECRET_KEY = CONFIG.secret_key
DEBUG = CONFIG.debug
# The public URL's host and the loopback names: a request for any other Host is refused (400).
ALLOWED_HOSTS = sorted(
    {urlsplit(CONFIG.public_url).hostname or "127.0.0.1", "127.0.0.1", "localhost", "[::1]"}
)

# Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (mailgate.wsgi strips
# them from every other peer); the scheme they forward makes request.is_secure() true.
MAILGATE_TRUSTED_PROXIES = CONFIG.trusted_proxies
if MAILGATE_TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
MAILGATE_METRICS_TOKEN = CONFIG.metrics_token
MAILGATE_MAX_RECIPIENTS = CONFIG.max_recipients
# Most attachments one message may carry.
MAILGATE_MAX_ATTACHMENTS = 100
# Requests a minute one API key may make (0: no limit); more get 429 with Retry-After.
MAILGATE_API_RATE_LIMIT = CONFIG.api_rate_limit
# The SMTP relay (mailgate.relay): listeners, certificate and plain logins from loopback; off unless
# MAILGATE_SMTP_LISTEN is set.
MAILGATE_RELAY = CONFIG.relay

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "mailgate.audit",
    "ninja",  # its templates and static files: the API docs page works offline
    "mailgate.core",
    "mailgate.console",
    "mailgate.accounts",
    "mailgate.servers",
    "mailgate.oauth",
    "mailgate.outbox",
    "mailgate.inbox",
    "mailgate.api",
    "mailgate.diagnostics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "mailgate.console.middleware.ContentSecurityPolicy",
    # CommonMiddleware checks the Host against ALLOWED_HOSTS: the API keeps it.
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # MAILGATE_CONSOLE_MIDDLEWARE, for every request but the REST API's (/api/), which
    # authenticates each call by its key and so needs no session, CSRF token or sign-in.
    "mailgate.console.middleware.ConsoleOnly",
    # Inside the console's middleware, so it sees the signed-in user; an API call is named by
    # its client address.
    "mailgate.audit.middleware.AuditActor",
]
MAILGATE_CONSOLE_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Every page needs a session except the views marked @login_not_required: sign-in, /healthz,
    # /metrics (and the REST API, which never gets here).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
]

ROOT_URLCONF = "mailgate.urls"
WSGI_APPLICATION = "mailgate.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "mailgate.accounts.context_processors.roles",
            ],
        },
    },
]

DATABASES = {"default": CONFIG.database.as_django()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

SESSION_COOKIE_AGE = CONFIG.session_hours * 3600
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = CONFIG.public_url.startswith("https://")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_TRUSTED_ORIGINS = [CONFIG.public_url]
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# HSTS only when the console is served over https (a year; browsers then refuse plain http).
if CONFIG.public_url.startswith("https://"):
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Behind a trusted proxy the scheme is known, so plain http is redirected (not the probes).
    SECURE_SSL_REDIRECT = bool(MAILGATE_TRUSTED_PROXIES)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# Preloading (security.W021) is the domain owner's decision to submit to browsers, not mailgate's.
# security.W003 ("CsrfViewMiddleware is not in MIDDLEWARE"): it is in MAILGATE_CONSOLE_MIDDLEWARE,
# and mailgate.console.checks runs Django's CSRF and session checks against that chain.
SILENCED_SYSTEM_CHECKS = ["security.W021", "security.W003"]

# Pages run no inline script and load nothing from elsewhere; the middleware adds form-action
# (mailgate.console.middleware).
MAILGATE_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# API messages carry attachments base64-encoded in JSON: allow the largest provider limit (35 MB
# for Exchange Online) plus the base64 growth; each server's own size limit is enforced at enqueue.
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024 * 1024

STATIC_URL = "static/"
STATIC_ROOT = CONFIG.home / "static"

# Login throttling: failed sign-ins per username and per client address in a sliding window.
MAILGATE_LOGIN_MAX_FAILURES = 5
MAILGATE_LOGIN_WINDOW_SECONDS = 15 * 60

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "mailgate_cache",
    }
}

OPERATIONS = conf.load_operations()
LOGGING = logs.logging_config(OPERATIONS.log_format, OPERATIONS.log_level)

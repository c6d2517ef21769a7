"""WSGI entry point for production servers (gunicorn mailgate.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailgate.settings")

application = get_wsgi_application()

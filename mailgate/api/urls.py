from django.contrib.auth.decorators import login_not_required
from django.urls import URLPattern, URLResolver, path

from mailgate.api.api import api


def _without_session(
    patterns: list[URLPattern | URLResolver],
) -> list[URLPattern | URLResolver]:
    """The API authenticates each call by its key, so no API view asks for a console sign-in."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            _without_session(pattern.url_patterns)
        else:
            login_not_required(pattern.callback)
    return patterns


_patterns, _app_name, _namespace = api.urls
urlpatterns = [path("", (_without_session(_patterns), _app_name, _namespace))]

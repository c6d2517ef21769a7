from django.urls import path

from mailgate.api import console_views

urlpatterns = [
    path("", console_views.apikey_list, name="apikeys"),
    path("<int:pk>/revoke/", console_views.apikey_revoke, name="apikey-revoke"),
]

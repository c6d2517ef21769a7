from django.urls import path

from mailgate.api.api import api

urlpatterns = [path("", api.urls)]

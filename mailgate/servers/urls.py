from django.urls import path

from mailgate.servers import views

app_name = "servers"

urlpatterns = [
    path("", views.server_list, name="list"),
    path("add/", views.server_add, name="add"),
    path("form.js", views.form_script, name="form-js"),
    path("<int:pk>/", views.server_edit, name="edit"),
    path("<int:pk>/delete/", views.server_delete, name="delete"),
]

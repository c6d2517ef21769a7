from django.http import HttpRequest, HttpResponse


def apikey_list(request: HttpRequest) -> HttpResponse:
    return HttpResponse("not yet")

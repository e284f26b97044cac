"""A Django project in one module: settings, views, URLs, and both of Django's handlers: WSGI
(``django_app:app``) and ASGI (``django_app:asgi_app``)."""

from __future__ import annotations

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="cppuvicorn-e2e-not-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def hello(request, name):
    return JsonResponse({
        "hello": name,
        "greeting": request.GET.get("greeting", "hi"),
        "method": request.method,
        "path": request.path,
        "host": request.get_host(),
        "secure": request.is_secure(),
    })


def form(request):
    if request.method != "POST":
        return HttpResponse("POST only", status=405)
    return JsonResponse({"fields": dict(request.POST.lists()), "body_size": len(request.body)})


def stream(request):
    return StreamingHttpResponse((f"part {i}\n" for i in range(5)), content_type="text/plain")


def boom(request):
    raise RuntimeError("django view exploded")


urlpatterns = [
    path("hello/<str:name>", hello),
    path("form", form),
    path("stream", stream),
    path("boom", boom),
]

app = get_wsgi_application()
asgi_app = get_asgi_application()

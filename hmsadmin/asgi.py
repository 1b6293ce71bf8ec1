"""ASGI entry point: HTTP through Django, websockets through Channels."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hmsadmin.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from busapp.routing import websocket_urlpatterns  # noqa: E402
from busapp.websocket_origin import SameOriginValidator  # noqa: E402

# What start-up loaded (Django, the apps, the URLconf) lives as long as the process: kept out
# of the garbage collector's full passes, which otherwise stall every live socket (bench/live.py).
gc.freeze()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The origin by scheme, host and port, as Django's CSRF check reads a POST's (busapp/websocket_origin.py).
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

"""The cart work of the load test, through django-spire's `SessionController`.

The same two routes as benches/http/bench_server.rs, doing the same work on the same layout:
the `shopping_cart` namespace holds `{"items": {"apple": N}, "_timeout_datestamp": ...}`.
"""

from django.http import HttpResponse
from django.views.decorators.http import require_GET, require_POST
from django_spire.contrib.session.controller import SessionController

KEY = "shopping_cart"
ITEM = "apple"


@require_GET
def cart(request):
    """GET /cart: the quantity of apples in the cart (0 if none)."""
    # Constructing the controller drops the namespace if its stamp has passed. (It also
    # creates the namespace, marking the session modified, when there is none; every session
    # of the load test already holds one, so this read saves nothing.)
    controller = SessionController(request, KEY)
    items = controller.data.get("items", {})
    return HttpResponse(str(items.get(ITEM, 0)), content_type="text/plain")


@require_POST
def add(request):
    """POST /cart/add: add one apple; the write slides the stamp to now + 300 s."""
    controller = SessionController(request, KEY)
    items = controller.data.get("items", {})
    items[ITEM] = items.get(ITEM, 0) + 1
    controller["items"] = items
    return HttpResponse(str(items[ITEM]), content_type="text/plain")

"""A fake Stripe on loopback: a real HTTP server in a thread serving only what Arbiter calls (meters, customers,
products and prices, subscriptions, meter events deduplicated by identifier, invoices, portal sessions), spoken
to through the `stripe` SDK. Also signs webhooks as Stripe does.

localstripe does not serve Billing Meters or meter events, hence this one.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`items[0][price]=x`) back into dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            if following is None:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        converted = {key: _lists(value) for key, value in node.items()}
        if converted and all(key.isdigit() for key in converted):
            return [converted[key] for key in sorted(converted, key=int)]
        return converted
    return node


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload`, as Stripe computes it."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


class FakeStripe:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.meter_events: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.refuse_customers: set[str] = set()
        # While set, meter events answer this status (500: Stripe failing, 429: throttling).
        self.meter_events_status: int | None = None
        # Called with each accepted meter event before the answer goes back (the crash test stalls there).
        self.after_meter_event: Callable[[dict[str, Any]], None] | None = None
        self.url = ""

    # --- what tests read ---------------------------------------------------------------------------------

    def totals(self) -> dict[tuple[str, str], int]:
        """Units per (customer, event name) over the accepted meter events."""
        sums: dict[tuple[str, str], int] = {}
        for event in self.meter_events.values():
            key = (event["payload"]["stripe_customer_id"], event["event_name"])
            sums[key] = sums.get(key, 0) + int(event["payload"]["value"])
        return sums

    def of(self, kind: str) -> list[dict[str, Any]]:
        return list(self.objects.get(kind, {}).values())

    def add_invoice(self, customer: str, **fields: Any) -> dict[str, Any]:
        return self._store(
            "invoice",
            {
                "customer": customer,
                "status": "paid",
                "number": f"INV-{next(self.ids)}",
                "amount_due": 0,
                "amount_paid": 0,
                "currency": "usd",
                "hosted_invoice_url": f"{self.url}/i/{next(self.ids)}",
                **fields,
            },
        )

    # --- the API -------------------------------------------------------------------------------------------

    def _store(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        prefix = {"customer": "cus", "subscription": "sub", "price": "price", "product": "prod"}.get(
            kind, kind
        )
        obj = {"id": f"{prefix}_{next(self.ids)}", "object": kind, "created": int(time.time()), **body}
        self.objects.setdefault(kind, {})[obj["id"]] = obj
        return obj

    def handle(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests.append((method, path))
        route = (method, path)
        if route == ("GET", "/v1/billing/meters"):
            return 200, _list(self.of("billing.meter"))
        if route == ("POST", "/v1/billing/meters"):
            return 200, self._store("billing.meter", {"status": "active", **params})
        if route == ("POST", "/v1/customers"):
            return 200, self._store("customer", params)
        if route == ("POST", "/v1/products"):
            return 200, self._store("product", params)
        if route == ("POST", "/v1/prices"):
            return 200, self._store("price", {"active": True, **params})
        if route == ("GET", "/v1/prices"):
            keys = set(params.get("lookup_keys") or [])
            return 200, _list([p for p in self.of("price") if not keys or p.get("lookup_key") in keys])
        if route == ("POST", "/v1/subscriptions"):
            if params.get("customer") not in self.objects.get("customer", {}):
                return _refuse("resource_missing", f"No such customer: '{params.get('customer')}'")
            items = [{"price": self.objects["price"][item["price"]]} for item in params.get("items", [])]
            return 200, self._store("subscription", {**params, "status": "active", "items": _list(items)})
        if route == ("POST", "/v1/billing/meter_events"):
            return self._meter_event(params)
        if route == ("GET", "/v1/invoices"):
            mine = [i for i in self.of("invoice") if i["customer"] == params.get("customer")]
            return 200, _list(sorted(mine, key=lambda i: i["id"], reverse=True))
        if route == ("POST", "/v1/billing_portal/sessions"):
            session = {"customer": params["customer"], "return_url": params.get("return_url")}
            stored = self._store("billing_portal.session", session)
            return 200, {**stored, "url": f"{self.url}/portal/{stored['id']}"}
        return _refuse("unknown_route", f"Unrecognized request URL ({method}: {path}).", status=404)

    def _meter_event(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.meter_events_status is not None:
            kind = "rate_limit_error" if self.meter_events_status == 429 else "api_error"
            return self.meter_events_status, {"error": {"type": kind, "message": "Try again later."}}
        identifier = params.get("identifier") or f"gen_{next(self.ids)}"
        customer = params.get("payload", {}).get("stripe_customer_id")
        if identifier in self.meter_events:
            return _refuse(
                "resource_already_exists", f"An event with identifier {identifier} already exists."
            )
        if not any(m["event_name"] == params.get("event_name") for m in self.of("billing.meter")):
            return _refuse("resource_missing", f"No active meter with event_name {params.get('event_name')}.")
        if customer in self.refuse_customers or customer not in self.objects.get("customer", {}):
            return _refuse("resource_missing", f"No such customer: '{customer}'")
        event = {"object": "billing.meter_event", "identifier": identifier, **params}
        self.meter_events[identifier] = event
        return 200, event


def _list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": False, "url": ""}


def _refuse(code: str, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"type": "invalid_request_error", "code": code, "message": message}}


@contextmanager
def running_fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            params = _nest(parse_qsl(split.query) + parse_qsl(body))
            key = self.headers.get("Idempotency-Key") if self.command == "POST" else None
            accepted_event = False
            with fake.lock:
                if key and key in fake.idempotent:
                    status, answer = fake.idempotent[key]
                else:
                    status, answer = fake.handle(self.command, split.path, params)
                    if key:
                        fake.idempotent[key] = (status, answer)
                    accepted_event = status == 200 and split.path == "/v1/billing/meter_events"
            if accepted_event and fake.after_meter_event is not None:
                fake.after_meter_event(answer)
            data = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the caller died waiting (the crash test)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()

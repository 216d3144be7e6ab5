"""The domain errors of the webhook path, each with the HTTP status it is answered with.

    SipRouterError
    ├── DeliveryError            a delivery we refuse; never reaches the rules or upstream
    │   ├── MalformedDelivery     400  missing/garbled headers, non-UTF-8 body
    │   ├── SignatureMismatch     401  no signature verifies, or timestamp out of window
    │   ├── PayloadTooLarge       413  body over 64 KiB
    │   └── UnreadablePayload     400  verified, but not a readable event
    └── ServiceUnavailable        503  shutting down, rules not loaded: retry later
        └── StoreDown             503  the shared store does not answer (logged as an error)

Rule-file errors live in `app.rules.problems`, store errors in `app.store`.
The messages are fixed texts: they never echo the request.
"""

from __future__ import annotations


class SipRouterError(Exception):
    """Base of sip-router's domain errors."""

    status_code = 500


class DeliveryError(SipRouterError):
    """A webhook delivery that is refused before anything is decided."""

    status_code = 400
    outcome = "malformed"


class MalformedDelivery(DeliveryError):
    """Missing or garbled headers, a body that is not UTF-8 (the base's 400, `malformed`)."""


class SignatureMismatch(DeliveryError):
    status_code = 401
    outcome = "bad_signature"


class PayloadTooLarge(DeliveryError):
    status_code = 413
    outcome = "too_large"


class UnreadablePayload(DeliveryError):
    status_code = 400
    outcome = "unreadable"


class ServiceUnavailable(SipRouterError):
    """The delivery cannot be processed now; the sender will retry."""

    status_code = 503
    outcome = "unavailable"


class StoreDown(ServiceUnavailable):
    """The shared store (Redis) does not answer: no delivery can be claimed until it does."""

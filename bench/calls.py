"""Realistic incoming calls for routing_rules/rules.yaml, signed before any timing starts.

The mix (by share of calls) exercises every rule of the example clinic file: ordinary
callers to the main and Spanish lines, blocked numbers, withheld numbers, clinicians and
pharmacy partners. SIP headers look like a carrier trunk's INVITE (Via, From with a
display name and tag, To, Call-ID, CSeq, Contact, P-Asserted-Identity, X- headers).
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass

from app.webhook_signing import incoming_call_body, sign_delivery

MAIN_LINE = "+14155550100"
SPANISH_LINE = "+14155550177"
_AREA_CODES = ("415", "510", "650", "628", "408", "925", "707", "212", "312", "206")
_NAMES = ("Alice Example", "BOB SMITH", "Dr. Chen", "WIRELESS CALLER", "Maria Lopez", "")
_BLOCKED = ("+12025550199", "+13105550187", "+18005550111", "+442079460958")
_CLINICIANS = ("+14155550142", "+16285550119", "+16505551234", "+16505559876")

# (kind, share): the shares add up to 1.
MIX = (
    ("ordinary", 0.60),
    ("spanish_line", 0.10),
    ("blocked", 0.08),
    ("anonymous", 0.05),
    ("clinician", 0.07),
    ("pharmacy_partner", 0.10),
)


@dataclass(frozen=True, slots=True)
class PreparedCall:
    call_id: str
    kind: str
    request: bytes  # the whole HTTP/1.1 request, ready to write


def _ordinary_number(rng: random.Random) -> str:
    return f"+1{rng.choice(_AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"


def sip_headers(rng: random.Random, kind: str) -> list[tuple[str, str]]:
    """The INVITE headers of one call of the given kind."""
    called = SPANISH_LINE if kind == "spanish_line" else MAIN_LINE
    caller: str | None
    if kind == "blocked":
        caller = rng.choice(_BLOCKED)
    elif kind == "anonymous":
        caller = None
    elif kind == "clinician":
        caller = rng.choice(_CLINICIANS)
    else:
        caller = _ordinary_number(rng)
    edge = f"54.172.60.{rng.randint(0, 15)}"
    headers = [("Via", f"SIP/2.0/UDP {edge}:5060;branch=z9hG4bK{secrets.token_hex(8)};rport")]
    if caller is None:
        headers.append(
            ("From", f'"Anonymous" <sip:anonymous@anonymous.invalid>;tag={rng.getrandbits(32):08x}')
        )
        headers.append(("Privacy", "id"))
    else:
        name = rng.choice(_NAMES)
        display = f'"{name}" ' if name else ""
        headers.append(
            ("From", f"{display}<sip:{caller}@pstn.twilio.com>;tag={rng.getrandbits(32):08x}")
        )
        if rng.random() < 0.5:
            headers.append(("P-Asserted-Identity", f"<sip:{caller}@pstn.twilio.com;user=phone>"))
    headers += [
        ("To", f"<sip:{called}@sip.api.openai.com>"),
        ("Call-ID", f"{secrets.token_hex(16)}@0.0.0.0"),
        ("CSeq", "1 INVITE"),
        ("Contact", f"<sip:{caller or 'anonymous'}@{edge}:5060;transport=udp>"),
        ("Max-Forwards", "69"),
        ("User-Agent", "Twilio Gateway"),
        ("X-Twilio-CallSid", "CA" + secrets.token_hex(16)),
    ]
    if kind == "pharmacy_partner":
        headers.append(("X-Partner-Id", f"PH{rng.randint(0, 9999):04d}"))
    return headers


def prepare_calls(
    count: int, *, secret: str, host: str, timestamps: list[int], seed: int = 7
) -> list[PreparedCall]:
    """`count` signed deliveries, each a unique call; `timestamps[i]` is call i's send second."""
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    calls = []
    for i in range(count):
        kind = rng.choices(kinds, weights)[0]
        call_id = "rtc_" + secrets.token_hex(16)
        body = incoming_call_body(call_id, timestamps[i], sip_headers(rng, kind))
        headers = sign_delivery(secret, body, timestamp=timestamps[i])
        head = ["POST /webhooks/openai HTTP/1.1", f"host: {host}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"content-length: {len(body)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        calls.append(PreparedCall(call_id, kind, request))
    return calls

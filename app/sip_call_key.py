"""The key that names one phone call across its announcements.

The same SIP call may be announced twice, by Realtime (`rtc_...`) and by GPT-Live
(`live_...`), each with an id of its own. OpenAI does not document how to tell that two
announcements are one call; sip-router assumes both carry the headers of the same INVITE,
so its `Call-ID` together with its `From` (whose tag is the caller's half of the dialog)
names the call. The key is a digest: no header value reaches the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

SIP_CALL_KEY_PREFIX: Final = "sipcall:"
# RFC 3261 compact forms: "i" is Call-ID, "f" is From.
_CALL_ID_HEADERS: Final = ("call-id", "i")
_FROM_HEADERS: Final = ("from", "f")


def sip_call_key(sip_headers: Iterable[tuple[str, str]]) -> str | None:
    """`sipcall:` + sha256(Call-ID + "\\n" + From) in hex; None without a Call-ID value.

    The first value of each header counts; surrounding whitespace is not part of it.
    """
    call_id: str | None = None
    caller: str | None = None
    for name, value in sip_headers:
        lowered = name.strip().lower()
        if call_id is None and lowered in _CALL_ID_HEADERS:
            call_id = value.strip()
        elif caller is None and lowered in _FROM_HEADERS:
            caller = value.strip()
    if not call_id:
        return None
    text = f"{call_id}\n{caller or ''}"
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    return SIP_CALL_KEY_PREFIX + digest

"""Refer targets: what a `target_uri` must look like after rendering (tel: E.164 or sip:)."""

from __future__ import annotations

import re

_TEL_URI = re.compile(r"tel:\+[1-9][0-9]{6,14}(?:;[A-Za-z0-9\-_.!~*'()&=+$,;:]*)?")
_SIP_URI = re.compile(
    r"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+@)?"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:;[A-Za-z0-9\-_.!~*'()&=+$,:%]*)*"
)


def check_target_uri(uri: str) -> str | None:
    """None when `uri` is a `tel:` E.164 or `sip:`/`sips:` URI fit for Refer-To, else why not."""
    if len(uri) > 512:
        return "target_uri is longer than 512 characters"
    if _TEL_URI.fullmatch(uri) or _SIP_URI.fullmatch(uri):
        return None
    return "target_uri must be tel:+<E.164> or a sip:/sips: URI"

"""The numbers of a simulated call (`simulate`, `/admin/simulate`), checked before deciding.

A simulated number is read as a real call's SIP user part is: "+digits" as given, national
forms in the rules' region. What would not be read as a number there is refused, rather than
decided as an unknown caller or called number.
"""

from __future__ import annotations

from app.phone_numbers import parse_header_number

WITHHELD_CALLER = "anonymous"


def simulated_number_problem(text: str, region: str | None, *, caller: bool) -> str | None:
    """Why `text` is not a number of a simulated call, or None when it is.

    The caller may also be "anonymous" or empty (a withheld number).
    """
    stripped = text.strip()
    if caller and stripped.lower() in (WITHHELD_CALLER, ""):
        return None
    if stripped and parse_header_number(stripped, region or "ZZ") is not None:
        return None
    forms = "+ and the country code, e.g. +14155550100"
    if region:
        forms += f", or a national number of the rules' region {region}"
    if caller:
        forms += f", or '{WITHHELD_CALLER}' for a withheld number"
    return f"not a phone number (write {forms})"

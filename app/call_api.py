"""Which of OpenAI's voice APIs a call came through, and where each one's call endpoints are.

Realtime announces a call with `realtime.call.incoming` and answers at
`/realtime/calls/{call_id}/...`; GPT-Live with `live.*.incoming`, at
`/live/sessions/{id}/...`.
"""

from __future__ import annotations

from typing import Literal

CallApi = Literal["realtime", "live"]
# Where each API's call endpoints are, below OPENAI_BASE_URL: `{path}/{id}/{verb}`.
CALL_PATHS: dict[CallApi, str] = {"realtime": "/realtime/calls", "live": "/live/sessions"}

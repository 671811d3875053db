"""Every engine event kind is documented in docs/API.md, and the events
table documents no kind the engine does not have."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dmvpn.nhrp import Event, EventKind

API_MD = Path(__file__).resolve().parents[2] / "docs" / "API.md"
MARKER = "<!-- event kinds:"


def _documented_kinds() -> list[str]:
    text = API_MD.read_text()
    assert MARKER in text, f"docs/API.md lost its event kinds table ({MARKER!r})"
    table = text[text.index(MARKER) :].split("\n\n", 1)[0]
    return re.findall(r"^\| `([a-z-]+)` \|", table, flags=re.MULTILINE)


def test_every_event_kind_is_documented_once() -> None:
    documented = _documented_kinds()
    assert len(documented) == len(set(documented)), "a kind is listed twice"
    assert set(documented) == {k.value for k in EventKind}


def test_kinds_compare_format_and_serialise_as_their_strings() -> None:
    # Logs and /v1/events print kinds; they must read as before the enum.
    event = Event(EventKind.RESOLUTION_REPLY_FORWARDED, "m", {})
    assert event.kind == "resolution-reply-forwarded"
    assert f"event.{event.kind}" == "event.resolution-reply-forwarded"
    assert json.dumps({"kind": event.kind}) == '{"kind": "resolution-reply-forwarded"}'

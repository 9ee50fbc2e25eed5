"""The turn protocol: tag names, action parsing and format rules (work in progress)."""

from __future__ import annotations

# Every tag of the wire format. The tools strip these from web text so a page cannot forge an action.
PROTOCOL_TAG_NAMES: tuple[str, ...] = ("reason", "answer", "search", "img", "text_search", "information")

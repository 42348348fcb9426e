"""Reading a message's header block (for Sender ID's PRA).  Pure.

Only the header block is read: everything after the first empty line is
ignored, and so is anything past *limit* bytes.  Folded lines are unfolded;
names keep their spelling, values their text (RFC 2047 words undecoded).
"""

from __future__ import annotations

import email.parser
import email.policy

MAX_HEADER_BLOCK = 64 * 1024  # bytes read at most


def header_block(data: bytes, limit: int = MAX_HEADER_BLOCK) -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of the header block at the start of *data*, in order."""
    data = data[:limit]
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep)
        if end >= 0:
            data = data[:end]
            break
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    message = parser.parsebytes(data + b"\n\n", headersonly=True)
    return tuple((name, _unfold(str(value))) for name, value in message.items())


def fields_of(parsed: tuple[tuple[str, str], ...], raw: bytes) -> tuple[tuple[str, str], ...]:
    """*parsed* when given, else the fields of the block *raw* (`header_block`).

    A request's block is kept raw and parsed only when read: parsing costs more
    than a warm check (100-250 us), and only Sender ID and VBR read the fields.
    """
    if parsed or not raw:
        return parsed
    return header_block(raw)


def _unfold(value: str) -> str:
    # RFC 5322 2.2.3: unfolding removes the line breaks, keeping the white space after them
    return value.replace("\r\n", "").replace("\n", "").strip()

"""DNS messages on the wire (RFC 1035 section 4): build a query, read a reply.  Pure.

Only what a stub client needs: one question, and the answer and authority
records of the types the checks ask for (TXT, A, AAAA, MX, SRV, PTR, CNAME,
NS) plus SOA for negative caching (RFC 2308 section 5).  Other record types
are kept as raw bytes.  Every length and pointer is checked: a malformed
reply raises `MalformedReply`, never anything else.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import NamedTuple

MAX_NAME_WIRE = 255  # RFC 1035 2.3.4
MAX_LABEL = 63  # RFC 1035 2.3.4
MAX_POINTERS = 64  # compression pointers followed in one name; loops end here
HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
CLASS_IN = 1
FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_AD = 0x0020  # RFC 4035 3.2.3; in a query, RFC 6840 5.7: "tell me whether you validated it"
TYPE_OPT = 41  # RFC 6891 6.1.1


class RType(enum.IntEnum):
    """The record types the checks ask for (RFC 1035 3.2.2, RFC 3596, RFC 2782)."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33

    @classmethod
    def make(cls, text: str | int) -> RType:
        """``RType.make("txt")`` or ``RType.make(16)``.

        :raises ValueError: for a type this client does not ask for.
        """
        if isinstance(text, int):
            return cls(text)
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unsupported record type {text!r}") from None


class Rcode(enum.IntEnum):
    """Response codes (RFC 1035 4.1.1)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # RFC 6891 9: an extended RCODE, its upper 8 bits in the OPT record


class MalformedReply(ValueError):
    """A reply that does not parse as a DNS message."""


class RR(NamedTuple):
    """One resource record: owner name (lower case, no trailing dot), type, TTL, value.

    Values: TXT -> the strings joined (bytes, RFC 7208 3.3); A/AAAA -> address
    text; MX -> (preference, exchange); SRV -> (priority, weight, port,
    target); PTR/CNAME/NS -> name; SOA -> the minimum field (int); other
    types -> raw rdata bytes.
    """

    name: str
    rtype: int
    ttl: int
    value: object


class Reply(NamedTuple):
    """A parsed reply.

    ``rcode`` is the full RCODE: the header's 4 bits and, when the reply
    carries an OPT record, its 8 upper bits (RFC 6891 6.1.3).  ``edns`` says
    whether it carried one; ``authentic`` is the AD bit.
    """

    id: int
    rcode: int
    truncated: bool
    qname: str
    qtype: int
    qclass: int
    answers: tuple[RR, ...]
    authority: tuple[RR, ...]
    edns: bool = False
    authentic: bool = False


def encode_name(name: str) -> bytes:
    """A domain name (text, without trailing dot) in wire form.

    :raises ValueError: for an empty label or a label or name over the RFC 1035 limits.
    """
    out = bytearray()
    if name and name != ".":
        for label in name.rstrip(".").split("."):
            raw = label.encode("ascii")
            if not raw or len(raw) > MAX_LABEL:
                raise ValueError(f"bad label in {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > MAX_NAME_WIRE:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def build_query(qid: int, name: str, rtype: int, recursion: bool = True, authentic: bool = False) -> bytes:
    """A query for one question, class IN, with RD set when *recursion*, AD when *authentic*.

    The AD bit in a query asks a validating resolver to say whether it
    validated the answer (RFC 6840 5.7), without the signatures DO would bring.

    :raises ValueError: for a name that does not fit RFC 1035's limits.
    """
    flags = (FLAG_RD if recursion else 0) | (FLAG_AD if authentic else 0)
    return HEADER.pack(qid, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", rtype, CLASS_IN)


def randomise_case(query: bytes, bits: bytes) -> bytes:
    """The query with the letters of its question name in mixed case, one bit of *bits* a letter.

    draft-vixie-dnsext-dns0x20: the server echoes the question as asked, so a
    forger must also guess the case of each letter.  *bits* holds at least
    one bit per byte of the name (random bytes from the caller).
    """
    out = bytearray(query)
    pos = HEADER.size
    bit = 0
    while out[pos]:
        end = pos + 1 + out[pos]
        for i in range(pos + 1, end):
            c = out[i]
            if 97 <= c <= 122 or 65 <= c <= 90:
                if bits[bit >> 3] >> (bit & 7) & 1:
                    out[i] = c ^ 0x20
                bit += 1
        pos = end
    return bytes(out)


def _read_name(data: bytes, pos: int, memo: dict[int, str]) -> tuple[str, int]:
    """Read a possibly compressed name at *pos*; return it and the offset after it.

    *memo* maps offsets already read to their names, so the usual pointer to
    the question (offset 12) costs a dict lookup.
    """
    labels: list[str] = []
    first = pos
    end = -1
    jumps = 0
    total = 0
    size = len(data)
    suffix = None
    while True:
        if pos >= size:
            raise MalformedReply("name runs past the end")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= size:
                raise MalformedReply("truncated compression pointer")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise MalformedReply("compression pointer loop")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            suffix = memo.get(pos)
            if suffix is not None:
                break
            continue
        if length & 0xC0:
            raise MalformedReply("unknown label type")
        pos += 1
        if pos + length > size:
            raise MalformedReply("label runs past the end")
        total += length + 1
        if total > MAX_NAME_WIRE:
            raise MalformedReply("name too long")
        label = data[pos : pos + length]
        if b"." in label or b"\\" in label:  # keep one label one label (as dnspython escapes them)
            label = label.replace(b"\\", b"\\\\").replace(b".", b"\\.")
        labels.append(label.decode("latin-1").lower())
        pos += length
    if suffix is not None:  # the rest of the name is one read before
        if suffix:
            labels.append(suffix)
        name = ".".join(labels)
        if len(name) > MAX_NAME_WIRE - 2:
            raise MalformedReply("name too long")
    else:
        name = ".".join(labels)
    if labels and first not in memo:
        memo[first] = name
    return name, (end if end >= 0 else pos)


def _skip_name(data: bytes, pos: int) -> int:
    """The offset after the name at *pos*, checked like `_read_name` checks it but not decoded.

    A compression pointer ends the name here; where it points is not read.
    """
    size = len(data)
    total = 0
    while True:
        if pos >= size:
            raise MalformedReply("name runs past the end")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 1 >= size:
                raise MalformedReply("truncated compression pointer")
            return pos + 2
        if length & 0xC0:
            raise MalformedReply("unknown label type")
        total += length + 1
        if total > MAX_NAME_WIRE:
            raise MalformedReply("name too long")
        pos += 1 + length


def _rdata(data: bytes, rtype: int, start: int, length: int, memo: dict[int, str]) -> object:
    end = start + length
    if rtype == RType.TXT:
        parts = []
        pos = start
        while pos < end:
            n = data[pos]
            if pos + 1 + n > end:
                raise MalformedReply("TXT string runs past its record")
            parts.append(data[pos + 1 : pos + 1 + n])
            pos += 1 + n
        return b"".join(parts)
    if rtype == RType.A:
        if length != 4:
            raise MalformedReply("A record is not 4 bytes")
        return str(ipaddress.IPv4Address(data[start:end]))
    if rtype == RType.AAAA:
        if length != 16:
            raise MalformedReply("AAAA record is not 16 bytes")
        return str(ipaddress.IPv6Address(data[start:end]))
    if rtype == RType.MX:
        if length < 3:
            raise MalformedReply("MX record too short")
        name, after = _read_name(data, start + 2, memo)
        _check_within(after, end, "MX")
        return (struct.unpack_from("!H", data, start)[0], name)
    if rtype == RType.SRV:
        if length < 7:
            raise MalformedReply("SRV record too short")
        prio, weight, port = struct.unpack_from("!HHH", data, start)
        name, after = _read_name(data, start + 6, memo)
        _check_within(after, end, "SRV")
        return (prio, weight, port, name)
    if rtype in (RType.PTR, RType.CNAME, RType.NS):
        name, after = _read_name(data, start, memo)
        _check_within(after, end, RType(rtype).name)
        return name
    if rtype == RType.SOA:  # only the minimum field is wanted: step over the two names
        pos = _skip_name(data, _skip_name(data, start))
        if pos + 20 != end:
            raise MalformedReply("SOA record has the wrong length")
        return struct.unpack_from("!I", data, pos + 16)[0]
    return data[start:end]


def _check_within(after: int, end: int, what: str) -> None:
    if after != end:
        raise MalformedReply(f"{what} record has the wrong length")


def parse_reply(data: bytes, asked: tuple[bytes, str] | None = None) -> Reply:
    """Parse a reply: header, the question, the answer and authority sections.

    *asked*, the question as sent (its wire form after the header, and its
    name), saves decoding a question the server echoed byte for byte.

    :raises MalformedReply: for anything that does not parse, or that is not
        a reply to a single question.
    """
    if len(data) < HEADER.size:
        raise MalformedReply("shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if not flags & FLAG_QR:
        raise MalformedReply("not a reply")
    if qdcount != 1:
        raise MalformedReply(f"{qdcount} questions")
    memo: dict[int, str] = {}
    if asked is not None and data.startswith(asked[0], HEADER.size):
        qname, pos = asked[1], HEADER.size + len(asked[0]) - 4
        memo[HEADER.size] = qname
    else:
        qname, pos = _read_name(data, HEADER.size, memo)
    if pos + 4 > len(data):
        raise MalformedReply("question runs past the end")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    pos += 4
    truncated = bool(flags & FLAG_TC)
    sections: list[list[RR]] = [[], []]
    for index, count in enumerate((ancount, nscount)):
        for _ in range(count):
            if truncated and pos >= len(data):
                break  # a truncated reply may stop anywhere; it is re-asked over TCP
            name, pos = _read_name(data, pos, memo)
            if pos + RR_FIXED.size > len(data):
                raise MalformedReply("record header runs past the end")
            rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(data, pos)
            pos += RR_FIXED.size
            if pos + rdlength > len(data):
                raise MalformedReply("record data runs past the end")
            if rclass == CLASS_IN:
                value = _rdata(data, rtype, pos, rdlength, memo)
                # RFC 2181 8: a TTL with the top bit set is read as zero
                sections[index].append(RR(name, rtype, ttl if ttl < 0x80000000 else 0, value))
            pos += rdlength
    rcode, edns = flags & 0xF, False
    for _ in range(arcount):  # only the OPT record is read here (RFC 6891 6.1.1)
        if truncated and pos >= len(data):
            break
        pos = _skip_name(data, pos)
        if pos + RR_FIXED.size > len(data):
            raise MalformedReply("record header runs past the end")
        rtype, _, ttl, rdlength = RR_FIXED.unpack_from(data, pos)
        pos += RR_FIXED.size + rdlength
        if pos > len(data):
            raise MalformedReply("record data runs past the end")
        if rtype == TYPE_OPT:
            if edns:
                raise MalformedReply("more than one OPT record")  # RFC 6891 6.1.1: FORMERR
            edns = True
            rcode |= (ttl >> 24) << 4  # the extended RCODE's upper 8 bits (RFC 6891 6.1.3)
    return Reply(
        id=qid,
        rcode=rcode,
        truncated=truncated,
        qname=qname,
        qtype=qtype,
        qclass=qclass,
        answers=tuple(sections[0]),
        authority=tuple(sections[1]),
        edns=edns,
        authentic=bool(flags & FLAG_AD),
    )

"""Registry record (REG1) parser: docs/record-format.md made code.

``parse_record(text)`` returns a `Record` or raises `InvalidRecord`, whose
``reasons`` each name the offending key.  ``select_record(strings)`` picks the
record among the TXT RRs found at a name.  Both are pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from ._types import IPNetwork, Method, MethodOffer, Netblock, Rating, Record
from .errors import InvalidRecord

MAX_RECORD_LENGTH = 4096  # characters after joining the strings of one RR
IDLEVEL_RANGE = range(2, 11)  # IDlevel=N, N in 2..10
DF_RANGE = range(1, 10)  # opt=df:N, N in 1..9
MAX_METHOD_QUERIES = 999
MAX_NUMERIC_RATING = 999

# record = [ "v=reg1" sep ] term *( sep term ) [ sep ]
_TERM = re.compile(
    r"(?P<key>[A-Za-z][A-Za-z0-9_-]*)="
    r'(?:"(?P<quoted>[\x20\x21\x23-\x7e]*)"|(?P<bare>[\x21\x23-\x3a\x3c-\x7e]+))'
)
_SEP = re.compile(r"[ \t;]+")
_VERSION_PREFIX = re.compile(r"v=reg1(?:[ \t;]|$)", re.IGNORECASE)
_SERVICE_CODE = re.compile(r"[A-Za-z0-9]{1,16}")
_LETTER_RATING = re.compile(r"[A-Z]")
_NUMBER = re.compile(r"[0-9]{1,3}")
_METHOD_ITEM = re.compile(r"(?P<name>[A-Za-z0-9]+)[:+](?P<n>[0-9]+)")
_IPV4_RANGE = re.compile(r"(?P<base>(?:[0-9]{1,3}\.){3})(?P<lo>[0-9]{1,3})-(?P<hi>[0-9]{1,3})")


def select_record(strings: Sequence[str]) -> str:
    """Choose the registry record among the TXT RRs at one name.

    Each element is one RR with its strings already joined.  Exactly one RR
    starting with ``v=reg1`` is the record; with none, a lone RR is.

    :raises InvalidRecord: when the choice is ambiguous or there is no RR.
    """
    tagged = [s for s in strings if _VERSION_PREFIX.match(s)]
    if len(tagged) == 1:
        return tagged[0]
    if len(tagged) > 1:
        raise InvalidRecord(("v: several TXT records start with v=reg1",))
    if len(strings) == 1:
        return strings[0]
    if not strings:
        raise InvalidRecord(("v: no TXT record at the name",))
    raise InvalidRecord((f"v: {len(strings)} TXT records and none starts with v=reg1",))


def tokenize(text: str) -> list[tuple[str, str, bool]]:
    """Split a record into ``(key, value, quoted)`` terms, keys as written.

    :raises InvalidRecord: on any text outside the grammar.
    """
    if len(text) > MAX_RECORD_LENGTH:
        raise InvalidRecord((f"record: {len(text)} characters, more than {MAX_RECORD_LENGTH}",))
    if not text.strip(" \t;"):
        raise InvalidRecord(("record: empty",))
    terms: list[tuple[str, str, bool]] = []
    pos = 0
    while pos < len(text):
        m = _TERM.match(text, pos)
        if m is None:
            raise InvalidRecord((f"record: cannot read a key=value term at {_excerpt(text, pos)}",))
        quoted = m.group("quoted") is not None
        value = m.group("quoted") if quoted else m.group("bare")
        terms.append((m.group("key"), value, quoted))
        pos = m.end()
        if pos == len(text):
            break
        s = _SEP.match(text, pos)
        if s is None:
            raise InvalidRecord(
                (f"{m.group('key')}: value must be followed by a space or ';', not {_excerpt(text, pos)}",)
            )
        pos = s.end()
    return terms


def parse_record(text: str) -> Record:
    """Parse a registry record.

    :raises InvalidRecord: with one reason per problem, each naming its key.
    """
    terms = tokenize(text)
    reasons: list[str] = []
    seen: dict[str, str] = {}
    values: dict[str, str] = {}
    for index, (key, value, _quoted) in enumerate(terms):
        lkey = key.lower()
        if lkey in seen:
            reasons.append(f"{key}: given twice")
            continue
        seen[lkey] = key
        values[lkey] = value
        if lkey == "v" and index != 0:
            reasons.append("v: the version tag must come first")
    builder = _Builder(values, seen, reasons)
    record = builder.build()
    if reasons:
        raise InvalidRecord(tuple(reasons))
    return record


class _Builder:
    """Reads the known keys of one record, collecting every reason to reject it."""

    def __init__(self, values: dict[str, str], spelled: dict[str, str], reasons: list[str]):
        self.values = values
        self.spelled = spelled
        self.reasons = reasons
        self._opts: dict[str, str] = {}

    def bad(self, key: str, why: str) -> None:
        self.reasons.append(f"{self.spelled.get(key, key)}: {why}")

    def build(self) -> Record:
        v = self.values
        self._opts = self._opt()
        if "v" in v and v["v"].lower() != "reg1":
            self.bad("v", f"unknown version {v['v']!r} (expected reg1)")
        if "meth" in v and "mth" in v:
            self.bad("mth", "both meth and mth are given")
        stop = self._stop()
        idlevel = self._idlevel()
        ratings, vouches = self._svc()
        methods = self._methods()
        df = self._opt_df()
        params = tuple((m, v[key]) for key in v if key not in _RESERVED and (m := Method.make(key)) is not None)
        return Record(
            stop=stop,
            idlevel=idlevel,
            ratings=ratings,
            vouches=vouches,
            ip4=self._netblocks("ip4", _ipv4_item),
            ip6=self._netblocks("ip6", _ipv6_item),
            methods=methods,
            params=params,
            default_status=df,
            versioned="v" in v,
        )

    # -- opt=k:v,... (2007) merged with the 2005 keys --------------------------------

    def _opt(self) -> dict[str, str]:
        raw = self.values.get("opt")
        if raw is None:
            return {}
        out: dict[str, str] = {}
        for item in raw.split(","):
            name, sep, value = item.partition(":")
            lname = name.lower()
            if not sep or not name or not value:
                self.bad("opt", f"item {item!r} is not k:v")
            elif lname in out:
                self.bad("opt", f"option {name!r} given twice")
            else:
                out[lname] = value
        return out

    def _merged(self, key: str, opt_key: str) -> str | None:
        """A value given as ``key=`` or ``opt=key:``; both must agree."""
        direct = self.values.get(key)
        via_opt = self._opts.get(opt_key)
        if direct is not None and via_opt is not None and direct.lower() != via_opt.lower():
            self.bad(key, f"{direct!r} disagrees with opt={opt_key}:{via_opt}")
        return direct if direct is not None else via_opt

    def _stop(self) -> bool:
        value = self._merged("stop", "stop")
        if value is None:
            return False
        if value.lower() != "all":
            self.bad("stop", f"value {value!r} is not 'all'")
            return False
        return True

    def _idlevel(self) -> int | None:
        value = self._merged("idlevel", "idlevel")
        if value is None:
            return None
        if not value.isdigit() or not value.isascii():
            self.bad("idlevel", f"{value!r} is not an integer")
            return None
        n = int(value)
        if n not in IDLEVEL_RANGE:
            self.bad("idlevel", f"{n} is outside {IDLEVEL_RANGE.start}..{IDLEVEL_RANGE.stop - 1}")
            return None
        return n

    def _opt_df(self) -> int | None:
        value = self._opts.get("df")
        if value is None:
            return None
        if not _NUMBER.fullmatch(value) or int(value) not in DF_RANGE:
            self.bad("opt", f"df:{value} is not an integer 1..9")
            return None
        return int(value)

    # -- svc ----------------------------------------------------------------------------

    def _svc(self) -> tuple[tuple[Rating, ...], tuple[str, ...]]:
        raw = self.values.get("svc")
        if raw is None:
            return (), ()
        ratings: list[Rating] = []
        vouches: list[str] = []
        for item in raw.split(","):
            code, sep, rating = item.partition(":")
            if not sep or not rating:
                self.bad("svc", f"rating missing in {item!r}")
            elif code.upper() == "VX":
                vouches.append(rating.lower())
            elif not _SERVICE_CODE.fullmatch(code):
                self.bad("svc", f"bad service code {code!r}")
            elif not (_LETTER_RATING.fullmatch(rating) or _NUMBER.fullmatch(rating)):
                self.bad("svc", f"bad rating {rating!r} for {code} (a letter A-Z or 0-999)")
            else:
                ratings.append(Rating(code.upper(), rating))
        return tuple(ratings), tuple(vouches)

    # -- meth / mth ---------------------------------------------------------------------

    def _methods(self) -> tuple[MethodOffer, ...]:
        key = "meth" if "meth" in self.values else "mth"
        raw = self.values.get(key)
        if raw is None:
            return ()
        offers: list[MethodOffer] = []
        for item in raw.split(","):
            m = _METHOD_ITEM.fullmatch(item)
            if m is None:
                self.bad(key, f"item {item!r} is not NAME:N or NAME+N")
                continue
            n = int(m.group("n"))
            if n > MAX_METHOD_QUERIES:
                self.bad(key, f"{m.group('name')} asks {n} queries, more than {MAX_METHOD_QUERIES}")
                continue
            method = Method.make(m.group("name"))
            if method is not None and all(o.method is not method for o in offers):
                offers.append(MethodOffer(method, n))
        return tuple(offers)

    # -- ip4 / ip6 ----------------------------------------------------------------------

    def _netblocks(self, key: str, parse: Callable[[str], Netblock]) -> tuple[Netblock, ...] | None:
        raw = self.values.get(key)
        if raw is None:
            return None
        blocks: list[Netblock] = []
        for item in raw.split(","):
            try:
                blocks.append(parse(item))
            except ValueError as exc:
                self.bad(key, f"bad {'IPv4' if key == 'ip4' else 'IPv6'} item {item!r} ({exc})")
        return tuple(blocks)


_RESERVED = frozenset({"v", "stop", "idlevel", "svc", "ip4", "ip6", "meth", "mth", "opt"})


def _ipv4_item(item: str) -> Netblock:
    m = _IPV4_RANGE.fullmatch(item)
    if m is not None:
        lo = ipaddress.IPv4Address(m.group("base") + m.group("lo"))
        hi_octet = int(m.group("hi"))
        if hi_octet > 255:
            raise ValueError("range end above 255")
        hi = ipaddress.IPv4Address(m.group("base") + str(hi_octet))
        if hi < lo:
            raise ValueError("range end below its start")
        nets: tuple[IPNetwork, ...] = tuple(ipaddress.summarize_address_range(lo, hi))
        return Netblock(item, nets)
    return Netblock(item, (_network(ipaddress.IPv4Network, item),))


def _ipv6_item(item: str) -> Netblock:
    return Netblock(item, (_network(ipaddress.IPv6Network, item),))


def _network(kind: type[IPNetwork], item: str) -> IPNetwork:
    """An address or CIDR block; host bits below the prefix are allowed."""
    if not item or item != item.strip():
        raise ValueError("empty or padded")
    try:
        return kind(item, strict=False)
    except ValueError as exc:
        raise ValueError(str(exc).rstrip(".")) from exc


def _excerpt(text: str, pos: int) -> str:
    return repr(text[pos : pos + 20]) if pos < len(text) else "the end"

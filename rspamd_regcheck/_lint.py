"""``record lint``: a registry record's meaning in sentences, and warnings that do not invalidate it.

`lint(text, config)` is pure: it parses the record as a check would and says
what a receiver with *config* would make of it (ratings, netblocks, methods
in the receiver's order within its limits), plus warnings for what is valid
but probably not meant.  `find_record` asks the registry for a host name the
way a check does (Registered ID, then ``IDlevel``); `lint_zone` lints every
record of a registry zone file.  The format is docs/record-format.md.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import dns.rdataclass
import dns.rdatatype

from ._answer import DnsAnswer, DnsStatus
from ._dns import Resolver, load_zone_file, normalise_name
from ._evaluate import Policy, plan, wants_methods
from ._identity import BadHelo, id_at_level, identify
from ._ratings import rate
from ._record import _METHOD_ITEM, MAX_METHOD_QUERIES, parse_record, select_record, tokenize
from ._types import Method, RatingClass, Record
from .config import Config
from .errors import InvalidRecord

KNOWN_KEYS = frozenset({"v", "stop", "idlevel", "svc", "ip4", "ip6", "meth", "mth", "opt"})
SAMPLE_V4 = ipaddress.ip_address("192.0.2.1")  # RFC 5737: a client outside any real netblock
SAMPLE_V6 = ipaddress.ip_address("2001:db8::1")  # RFC 3849


@dataclass(frozen=True)
class LintReport:
    """What ``record lint`` says of one record."""

    text: str
    valid: bool
    reasons: tuple[str, ...] = ()  # why it is invalid, each naming its key
    meaning: tuple[str, ...] = ()  # sentences
    warnings: tuple[str, ...] = ()
    name: str = ""  # where it was found, when it came from DNS or a zone file

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def lint(text: str, config: Config, ident: str = "the ID") -> LintReport:
    """Lint one record's text for a receiver configured by *config*."""
    try:
        record = parse_record(text)
    except InvalidRecord as exc:
        return LintReport(text, False, reasons=exc.reasons)
    terms = tokenize(text)  # parse_record succeeded, so this does too
    return LintReport(
        text, True, meaning=tuple(_meaning(record, config, ident)), warnings=tuple(_warnings(record, terms))
    )


def _meaning(record: Record, config: Config, ident: str) -> list[str]:
    if record.stop:
        return [f"stop=all: no server may send mail for {ident}; every check gives REGCHECK_STOP"]
    out: list[str] = []
    if record.idlevel is not None:
        out.append(
            f"IDlevel={record.idlevel}: the IDs under this name are {record.idlevel} labels deep; "
            f"a check asks again for the HELO name's last {record.idlevel} labels, and that record decides"
        )
        if record == Record(idlevel=record.idlevel, versioned=record.versioned):
            return out  # a pointer and nothing else
    policy = config.ratings
    ratings = rate(record.ratings, policy)
    parts = []
    for r in record.ratings:
        scale = policy.services.get(r.service)
        score = scale.scores.get(r.value) if scale is not None else None
        if scale is None or scale.weight <= 0:
            parts.append(f"{r.service} rates it {r.value} (not a service trusted here: ignored)")
        elif score is None:
            parts.append(f"{r.service} rates it {r.value} (no score here for that rating: ignored)")
        else:
            parts.append(f"{r.service} rates it {r.value} (score {score:g}, weight {scale.weight:g})")
    verdicts = {
        RatingClass.HIGH: "high here",
        RatingClass.LOW: "low here",
        RatingClass.BAD: "bad here: REGCHECK_RATING_BAD, no method runs",
        RatingClass.NONE: "no trusted rating: REGCHECK_NO_RATINGS, no method runs",
    }
    summary = verdicts[ratings.klass] + (f" (mean {ratings.mean:.2f})" if ratings.mean is not None else "")
    out.append(f"ratings: {', '.join(parts) or 'none'}: {summary}")
    if record.vouches:
        out.append(f"vouched for by {', '.join(record.vouches)} (kept, not rated)")
    if record.ip4 is None and record.ip6 is None:
        out.append("QR1: no netblocks, so QR1 never runs")
    for family, blocks in (("IPv4", record.ip4), ("IPv6", record.ip6)):
        if blocks is not None:
            nets = ", ".join(b.text for b in blocks)
            out.append(f"QR1: {family} clients in {nets} are authorised (the first method for them)")
        elif record.ip4 is not None or record.ip6 is not None:
            out.append(f"QR1: no {family} netblocks, so {family} clients skip QR1")
    if record.methods:
        offered = ", ".join(f"{o.method.value} (up to {o.queries} DNS questions)" for o in record.methods)
        out.append(f"methods offered, in the sender's order: {offered}")
    for method, value in record.params:
        if method in (Method.SPF, Method.SID):
            out.append(f"{method.value}: the registry's record {value!r} is evaluated instead of the domain's own")
    if record.default_status is not None:
        out.append(f"default status df:{record.default_status} (read, not used for scoring)")
    out.append(_plan_sentence(record, config, wants_methods(ratings)))
    return out


def _plan_sentence(record: Record, config: Config, methods_run: bool) -> str:
    if not methods_run:
        return "a receiver with this configuration runs no method for it (see the ratings)"
    policy = Policy(config.ratings, config.method_order, config.method_limits, config.authent_header)
    texts = {}
    for family, sample in (("IPv4", SAMPLE_V4), ("IPv6", SAMPLE_V6)):
        planned, skipped = plan(record, sample, policy)
        steps = ", then ".join(p.method.value for p in planned) or "nothing"
        over = "".join(f"; {s.options[0]} skipped: {s.options[1]} (REGCHECK_BUDGET)" for s in skipped)
        texts[family] = steps + over
    if texts["IPv4"] == texts["IPv6"]:
        return f"a receiver with this configuration runs {texts['IPv4']}, until one gives a final result"
    return (
        f"a receiver with this configuration runs, for IPv4 clients: {texts['IPv4']}; "
        f"for IPv6 clients: {texts['IPv6']}; until one gives a final result"
    )


def _warnings(record: Record, terms: Sequence[tuple[str, str, bool]]) -> list[str]:
    out: list[str] = []
    keys = {key.lower(): (key, value) for key, value, _quoted in terms}
    if "v" not in keys:
        out.append("v: no v=reg1 tag: the record is found only while it is the only TXT record at its name")
    for lkey, (key, _value) in keys.items():
        if lkey not in KNOWN_KEYS and Method.make(key) is None:
            out.append(f"{key}: not a REG1 key: ignored (a typo?)")
    for lkey in ("meth", "mth"):
        if lkey in keys:
            key, value = keys[lkey]
            for item in value.split(","):
                m = _METHOD_ITEM.fullmatch(item)
                if m is not None and Method.make(m.group("name")) is None:
                    out.append(f"{key}: {m.group('name')} is not a method any receiver knows: ignored")
    for key, blocks in (("ip4", record.ip4), ("ip6", record.ip6)):
        for block in blocks or ():
            if "-" in block.text or "/" not in block.text:
                continue
            net = ipaddress.ip_network(block.text, strict=False)
            if str(net) != block.text and net.network_address != ipaddress.ip_address(block.text.split("/")[0]):
                out.append(f"{key}: {block.text} has host bits set: read as {net}")
    if record.stop and (record.ratings or record.methods or record.ip4 or record.ip6):
        out.append("stop: stop=all beside ratings, netblocks or methods: they are never used")
    if not record.stop and record.idlevel is None and not record.ratings:
        out.append("svc: no ratings: receivers give REGCHECK_NO_RATINGS and run no method")
    if not record.stop and record.idlevel is None and not (record.methods or record.ip4 or record.ip6):
        out.append("meth: no method and no netblocks: a check can never authenticate the sender")
    if record.idlevel is not None and (record.ratings or record.methods or record.ip4 or record.ip6):
        out.append(
            f"IDlevel: the other keys apply only to HELO names with fewer than {record.idlevel} labels; "
            "every other check reads the deeper record"
        )
    for offer in record.methods:
        if offer.queries == MAX_METHOD_QUERIES:
            out.append(f"meth: {offer.method.value} asks the most questions allowed; receivers will skip it")
    return out


# -- finding records -------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """The names asked for a host, with what each answered, and the record that decides."""

    asked: tuple[tuple[str, str], ...] = ()  # (name, what it answered)
    name: str | None = None  # where the deciding record is
    texts: tuple[str, ...] = ()  # its TXT RRs
    ident: str = ""
    error: str | None = None  # a DNS failure: no verdict possible


async def find_record(resolver: Resolver, host: str, zones: Sequence[str]) -> Found:
    """Find the record that decides for *host*, as a check would.

    The Registered ID of *host* (any host name, e.g. ``mailout17.heaven.net``),
    in each zone in order; then, when that record says ``IDlevel=N``, once
    more for the host's last N labels.

    :raises ValueError: when *host* is not a host name.
    """
    found = identify(host)
    if isinstance(found, BadHelo):
        raise ValueError(f"{host!r} is not a host name ({found.reason})")
    asked: list[tuple[str, str]] = []
    ident = found.id
    for attempt in range(2):
        hit = None
        for zone in zones:
            name = f"{ident}.{zone}"
            answer = await resolver.query(name, "TXT")
            asked.append((name, _answer_text(answer)))
            if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
                continue
            if answer.status is not DnsStatus.OK:
                return Found(tuple(asked), ident=ident, error=f"{name}: {answer.detail or answer.status.value}")
            hit = (name, answer.records)
            break
        if hit is None:
            return Found(tuple(asked), ident=ident)
        deeper = _deeper(hit[1], found.helo, ident) if attempt == 0 else None
        if deeper is None:
            return Found(tuple(asked), hit[0], hit[1], ident)
        ident = deeper
    raise AssertionError("unreachable: the second pass always returns")


def _deeper(texts: tuple[str, ...], helo: str, ident: str) -> str | None:
    try:
        record = parse_record(select_record(texts))
    except InvalidRecord:
        return None
    if record.idlevel is None:
        return None
    deeper = id_at_level(helo, record.idlevel)
    return deeper if deeper is not None and len(deeper) > len(ident) else None


def _answer_text(answer: DnsAnswer) -> str:
    if answer.status is DnsStatus.OK:
        return " | ".join(json.dumps(str(t)) for t in answer.records)
    return "no record" if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA) else answer.status.value


def lint_zone(path: str, config: Config) -> list[LintReport]:
    """Lint the registry record at every name of a zone file that has TXT records.

    The zone's apex and names with an underscore label (``_dmarc``, a
    verification token) hold the zone's own TXT data, not IDs: they are
    left out.

    :raises InvalidZoneFile: when the file cannot be read.
    """
    zone = load_zone_file(path)
    origin = zone.origin
    assert origin is not None  # load_zone_file refuses a file without $ORIGIN
    reports = []
    for name, node in sorted(zone.nodes.items()):
        rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT)
        if rdataset is None or name == origin or any(label.startswith(b"_") for label in name.labels):
            continue
        texts = tuple(b"".join(rd.strings).decode("utf-8", "replace") for rd in rdataset)
        owner = normalise_name(name.to_text())
        ident = normalise_name(name.relativize(origin).to_text())
        try:
            report = lint(select_record(texts), config, ident)
        except InvalidRecord as exc:
            report = LintReport(" | ".join(texts), False, reasons=exc.reasons)
        reports.append(_named(report, owner))
    return reports


def _named(report: LintReport, name: str) -> LintReport:
    return LintReport(report.text, report.valid, report.reasons, report.meaning, report.warnings, name)


def format_report(report: LintReport) -> str:
    """The human form: valid or invalid, then the sentences or reasons, then the warnings."""
    lines = [f"{report.name}: {json.dumps(report.text)}"] if report.name else []
    lines.append("valid record" if report.valid else "invalid record")
    lines += [f"  {x}" for x in (report.meaning if report.valid else report.reasons)]
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)

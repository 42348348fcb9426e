"""Property tests (hypothesis) of everything that reads strangers' input.

No input may make these raise anything but their declared errors, and every
rejection must say why.  The CI profile has no deadline (shared machines are
slow at times); the example counts are printed in docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from pathlib import Path

import httptools
import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rspamd_regcheck import (
    BadHelo,
    Checker,
    Config,
    Identity,
    InvalidRecord,
    build_reply,
    evaluate,
    identify,
    parse_record,
)
from rspamd_regcheck._evaluate import Facts, Policy, RegistryFacts, RegistryStatus
from rspamd_regcheck._headers import header_block
from rspamd_regcheck._http import App, HttpError, HttpProtocol, Limits, envelope_from_headers
from rspamd_regcheck._record import select_record
from rspamd_regcheck._sid import pra
from rspamd_regcheck._wire import MalformedReply, parse_reply

settings.register_profile("ci", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

KEYS = ["v", "stop", "IDlevel", "svc", "ip4", "ip6", "meth", "mth", "opt", "spf", "sid", "x-future"]
REASON = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*: .+")
HELO_REASONS = {
    "missing",
    "too-long",
    "nul",
    "control-char",
    "ip-literal",
    "bad-idn",
    "bare-word",
    "empty-label",
    "label-too-long",
    "bad-label",
    "numeric-tld",
    "public-suffix",
}

# record-like text: known keys, plausible values, separators, and noise
value = st.one_of(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters='";'),
        min_size=1,
        max_size=30,
    ),
    st.from_regex(r'"[ -!#-~]{0,20}"', fullmatch=True),
    st.sampled_from(["all", "3", "S1:A,M2:B", "192.0.2.0/24", "192.0.2.1-9", "SPF:10,CSV+2", "df:3", "2001:db8::/32"]),
)
term = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), value)
record_text = st.one_of(
    st.lists(term, max_size=8).map(lambda ts: " ".join(ts)),
    st.lists(term, max_size=8).map(lambda ts: ";".join(ts)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@given(record_text)
def test_record_parser_accepts_or_names_the_key(text):
    try:
        record = parse_record(text)
    except InvalidRecord as exc:
        assert exc.reasons and all(REASON.match(r) for r in exc.reasons), exc.reasons
    else:
        assert record.idlevel is None or 2 <= record.idlevel <= 10
        assert all(0 <= o.queries <= 999 for o in record.methods)


@given(st.lists(record_text, max_size=4))
def test_record_choice_never_crashes(texts):
    try:
        chosen = select_record(texts)
    except InvalidRecord as exc:
        assert all(REASON.match(r) for r in exc.reasons)
    else:
        assert chosen in texts


helo_text = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.from_regex(r"[A-Za-z0-9-]{1,20}(\.[A-Za-z0-9-]{1,20}){0,5}\.?", fullmatch=True),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@given(helo_text)
def test_identity_is_valid_or_says_why(helo):
    found = identify(helo)
    if isinstance(found, BadHelo):
        assert found.reason in HELO_REASONS
        assert "\x00" not in found.text
    else:
        assert isinstance(found, Identity)
        assert found.helo == found.helo.lower() and found.helo.isascii() and len(found.helo) <= 253
        assert found.helo == found.id or found.helo.endswith("." + found.id)


header_name = st.sampled_from(["IP", "ip", "Helo", "From", "Rcpt", "Queue-Id", "User", "Dkim-Domain", "X-Other"])
header_value = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["192.0.2.1", "2001:db8::1", "<a@b.example>", "<>", "", "300.1.1.1"]),
)


@given(st.lists(st.tuples(header_name, header_value), max_size=10), st.binary(max_size=300))
def test_request_headers_make_an_envelope_or_a_400(headers, body):
    try:
        env = envelope_from_headers(headers, body)
    except HttpError as exc:
        assert exc.status == 400 and "IP header" in exc.message
    else:
        assert all(isinstance(n, str) and isinstance(v, str) for n, v in env.headers)
        pra(env.headers)  # the PRA is found or refused, never raised


@given(st.binary(max_size=600))
def test_header_block_is_text_that_encodes(data):
    for name, value in header_block(data):
        name.encode("utf-8"), value.encode("utf-8")  # no lone surrogates: msgpack and JSON can carry them


@given(st.binary(max_size=300))
def test_dns_reply_parser_raises_only_malformed(data):
    try:
        parse_reply(data)
    except MalformedReply:
        pass


class _Transport:
    """Collects what the protocol writes; the protocol cannot tell it from asyncio's."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False

    def write(self, data):
        self.data += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return default


class _Checker:
    def __init__(self):
        self.config = Config()

    async def check(self, env):
        raise AssertionError("no check expected for malformed input")


request_bytes = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda method, path, headers, body: (
            f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
        ),
        st.sampled_from(["GET", "POST", "PUT", "BREW", ""]),
        st.sampled_from(["/ping", "/nope", "/metrics", "*", "/" + "a" * 9000]),
        st.lists(st.binary(max_size=40), max_size=6),
        st.binary(max_size=50),
    ),
)


@given(st.lists(request_bytes, min_size=1, max_size=3))
def test_http_protocol_answers_or_closes(chunks):
    async def go():
        app = App(_Checker(), Limits(headers=20, header_bytes=4096, body=1024))
        proto = HttpProtocol(app)
        transport = _Transport()
        proto.connection_made(transport)
        for chunk in chunks:
            proto.data_received(chunk)
        await asyncio.sleep(0)
        proto.connection_lost(None)
        return transport

    transport = asyncio.run(go())
    out = bytes(transport.data)
    # whatever came in: nothing raised, and any answer is a well-formed HTTP response
    for reply in re.findall(rb"HTTP/1\.[01] (\d{3}) ", out):
        assert reply in (b"200", b"400", b"404", b"405", b"413", b"414", b"431", b"503")
    if b" 4" in out[:13]:
        body = out.split(b"\r\n\r\n", 1)[1]
        assert "error" in json.loads(body.split(b"HTTP/1.")[0])


surrogate_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)


@given(st.lists(surrogate_text, max_size=4), surrogate_text)
def test_replies_encode_as_json_and_msgpack_alike(reasons, ident):
    """Whatever strings reach a verdict, both encodings carry the same reply."""
    facts = Facts(
        ip=ipaddress.ip_address("192.0.2.1"),
        helo="mx.a.example",
        id=ident or "a.example",
        registry=RegistryFacts(RegistryStatus.INVALID, reasons=tuple(reasons)),
    )
    cfg = Config()
    verdict = evaluate(facts, Policy(cfg.ratings, cfg.method_order, cfg.method_limits))
    reply = build_reply(verdict, cfg)
    as_json = json.loads(json.dumps(reply))
    as_msgpack = msgpack.unpackb(msgpack.packb(reply))
    assert as_json == as_msgpack


# -- what reaches a header we ask rspamd to add (issue 17) ------------------------------------

ZONES = Path(__file__).parent / "zones"
HEADER_CFG = Config(
    registry_zones=("id.regcheck.test",),
    zone_files=tuple(str(p) for p in sorted(ZONES.glob("*.zone"))),
    nameservers=("127.0.0.1",),  # the discard port: a name outside the zone files times out at once
    dns_port=9,
    dns_timeout=0.02,
    dns_tries=1,
    deadline=0.2,
    local_networks=(),
    spf_receiver="mx.receiver.test",
)
# sessions that add headers: QR1 over IPv6, SPF for the HELO, SPF for MAIL FROM, QR1 over IPv4
SESSIONS = [
    {"IP": "2001:db8:6::1", "Helo": "mail.six.example"},
    {"IP": "69.55.226.139", "Helo": "mx1.wayforward.net", "From": "<tway@optsw.com>"},
    {"IP": "192.0.4.1", "Helo": "mx1.abilene.texas.rr.tld", "From": "<x@rr.tld>"},
    {"IP": "208.20.133.17", "Helo": "mailout17.heaven.net"},
]
TRICKS = ["%x; pass", "%eth0", " pass evil.example QR1 pass", ") evil=1 (", '"; helo=evil', "\t", "\xff", ";", "[", "]"]
hostile_value = st.one_of(st.sampled_from(TRICKS), st.text(max_size=24), st.binary(max_size=12).map(bytes.hex))
X_REGCHECK = re.compile(r"(?P<ip>[0-9a-f.:]+) (?P<id>[a-z0-9-]+(?:\.[a-z0-9-]+)+) (?:QR1|CSA|SPF|SID|DKIM|NONE) [a-z]+ "
                        r"ratings=[A-Za-z0-9:,]*")  # fmt: skip
RECEIVED_SPF = re.compile(r"(?:Pass|Fail|SoftFail|Neutral|None|TempError|PermError) \([^()\x00-\x1f]*\) (?P<pairs>.*)")
PAIR = re.compile(r'(?P<key>[a-z-]+)=(?P<value>[^\s;"()]+|"(?:[^"\\\x00-\x1f]|\\.)*")(?=; |$)')
SPF_KEYS = {"client-ip", "envelope-from", "helo", "receiver", "mechanism", "identity", "problem"}
_checker: list[Checker] = []


def parsed_headers(fields: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """The header fields as the worker's HTTP parser hands them over; None if llhttp refuses them."""

    class Collect:
        def __init__(self):
            self.headers = []

        def on_header(self, name, value):
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    sink = Collect()
    raw = b"POST /checkv2 HTTP/1.1\r\n" + b"".join(n.encode() + b": " + v.encode() + b"\r\n" for n, v in fields)
    try:
        httptools.HttpRequestParser(sink).feed_data(raw + b"Content-Length: 0\r\n\r\n")
    except httptools.HttpParserError:
        return None
    return sink.headers


@settings(max_examples=100)
@given(st.sampled_from(SESSIONS), st.sampled_from(["append", "replace", "prepend"]), hostile_value)
@example(SESSIONS[0], "append", "%x; pass")  # the attack: a zone ID carrying text
@example(SESSIONS[2], "replace", 'a"; helo=evil.example; x=") (@rr.tld')
def test_no_request_header_can_write_into_a_header_we_add(session, how, text):
    """Whatever a client puts in any request header, what we ask rspamd to add is built from what
    we validated: the address exactly as checked, the ID as identified, SPF's values quoted."""
    for field in ("IP", "Helo", "From", "Rcpt", "User", "Hostname", "Queue-Id", "Dkim-Domain"):
        _added_headers_are_ours(session, field, how, text)


def _added_headers_are_ours(session, field, how, text):
    value = session.get(field, "")
    value = {"replace": text, "append": value + text, "prepend": text + value}[how]
    fields = [(k, v) for k, v in session.items() if k != field] + [(field, value)]
    headers = parsed_headers([(k, v.encode("utf-8", "surrogatepass").decode("latin-1")) for k, v in fields])
    if headers is None:  # the HTTP parser refuses the request: nothing reaches the check
        return
    try:
        env = envelope_from_headers(headers, b"")
    except HttpError as exc:
        assert exc.status == 400 and field == "IP"
        return
    if not _checker:
        _checker.append(Checker(HEADER_CFG))
    verdict = asyncio.run(_checker[0].check(env)).verdict
    for name, added in verdict.add_headers:
        assert not re.search(r"[\x00-\x1f\x7f]", added), added
        if name == "X-Regcheck":
            m = X_REGCHECK.fullmatch(added)
            assert m, added
            assert m["ip"] == str(env.ip) and m["id"] == verdict.id
        else:
            assert name == "Received-SPF"
            m = RECEIVED_SPF.fullmatch(added)
            assert m, added
            found = list(PAIR.finditer(m["pairs"]))
            assert "; ".join(f[0] for f in found) == m["pairs"], added  # key=value pairs, nothing else
            assert {f["key"] for f in found} <= SPF_KEYS
            assert dict((f["key"], f["value"]) for f in found)["client-ip"] == str(env.ip)

"""The reply object (docs/protocol.md) in score and enforce mode."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace

import msgpack
import pytest

from rspamd_regcheck import Config, Facts, Policy, RegistryFacts, RegistryStatus, build_reply, evaluate
from rspamd_regcheck.symbols import BY_NAME

CFG = Config()
POLICY = Policy(CFG.ratings, CFG.method_order, CFG.method_limits)
IP = ipaddress.ip_address("192.0.2.1")


def verdict(status, **kw):
    facts = Facts(ip=IP, helo="mx.x.example", id="x.example", registry=RegistryFacts(status, **kw))
    return evaluate(facts, POLICY)


def test_score_mode_reply_shape():
    reply = build_reply(verdict(RegistryStatus.NO_RECORD), CFG, queries=1)
    assert reply["action"] == "no action"
    assert reply["score"] == 0.5 and reply["required_score"] == 15.0
    sym = reply["symbols"]["REGCHECK_NO_RECORD"]
    assert sym == {
        "name": "REGCHECK_NO_RECORD",
        "score": 0.5,
        "metric_score": 0.5,
        "description": BY_NAME["REGCHECK_NO_RECORD"].description,
        "options": ["x.example"],
    }
    assert reply["messages"] == {}
    assert reply["regcheck"]["verdict"]["action"] == "REJECT"
    assert reply["regcheck"]["queries"] == 1
    # the same data survives JSON and msgpack
    assert json.loads(json.dumps(reply)) == msgpack.unpackb(msgpack.packb(reply))


@pytest.mark.parametrize(
    "status,kw,settings,action,message",
    [
        pytest.param(
            RegistryStatus.NO_RECORD,
            {},
            {"enforce_no_record": True},
            "reject",
            "550 5.7.1 'x.example' is not listed in the sender registry",
            id="no-record-when-asked",
        ),
        pytest.param(RegistryStatus.NO_RECORD, {}, {}, "no action", None, id="no-record-by-default"),
        pytest.param(
            RegistryStatus.DNSFAIL,
            {"reasons": ("127.0.0.1:1: Connection refused",)},
            {},
            "soft reject",
            "451 4.4.3 Sender registry lookup for 'x.example' failed; please try again later",
            id="tempfail",
        ),
        pytest.param(
            RegistryStatus.DNSFAIL,
            {"reasons": ("timeout",)},
            {"enforce_tempfail": False},
            "no action",
            None,
            id="dns-off",
        ),
    ],
)
def test_enforce_mode_takes_the_enforce_decision(status, kw, settings, action, message):
    cfg = replace(CFG, mode="enforce", **settings)
    reply = build_reply(verdict(status, **kw), cfg)
    assert reply["action"] == action == reply["regcheck"]["enforce"]["action"]
    assert reply["messages"].get("smtp_message") == message == reply["regcheck"]["enforce"]["message"]
    assert "127.0.0.1" not in json.dumps(reply["messages"])  # internal addresses stay out of SMTP text


def test_score_mode_reply_still_says_what_enforce_would_do():
    reply = build_reply(verdict(RegistryStatus.DNSFAIL, reasons=("timeout",)), CFG)
    assert reply["action"] == "no action" and reply["messages"] == {}
    assert reply["regcheck"]["enforce"]["action"] == "soft reject"


def test_score_thresholds():
    cfg = replace(CFG, scores={**CFG.scores, "REGCHECK_NO_RECORD": 16.0})
    assert build_reply(verdict(RegistryStatus.NO_RECORD), cfg)["action"] == "reject"
    cfg = replace(CFG, scores={**CFG.scores, "REGCHECK_NO_RECORD": 7.0})
    assert build_reply(verdict(RegistryStatus.NO_RECORD), cfg)["action"] == "add header"
    cfg = replace(CFG, scores={**CFG.scores, "REGCHECK_NO_RECORD": 4.0})
    assert build_reply(verdict(RegistryStatus.NO_RECORD), cfg)["action"] == "greylist"

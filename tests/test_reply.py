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
    "status,kw,action,message",
    [
        pytest.param(RegistryStatus.NO_RECORD, {}, "reject", True, id="reject"),
        pytest.param(RegistryStatus.DNSFAIL, {"reasons": ("timeout",)}, "soft reject", True, id="tempfail"),
    ],
)
def test_enforce_mode_takes_the_seed_verdict(status, kw, action, message):
    cfg = replace(CFG, mode="enforce")
    reply = build_reply(verdict(status, **kw), cfg)
    assert reply["action"] == action
    assert ("smtp_message" in reply["messages"]) is message
    assert reply["messages"]["smtp_message"] == reply["regcheck"]["verdict"]["message"]


def test_score_thresholds():
    cfg = replace(CFG, scores={**CFG.scores, "REGCHECK_NO_RECORD": 16.0})
    assert build_reply(verdict(RegistryStatus.NO_RECORD), cfg)["action"] == "reject"
    cfg = replace(CFG, scores={**CFG.scores, "REGCHECK_NO_RECORD": 7.0})
    assert build_reply(verdict(RegistryStatus.NO_RECORD), cfg)["action"] == "add header"
    cfg = replace(CFG, scores={**CFG.scores, "REGCHECK_NO_RECORD": 4.0})
    assert build_reply(verdict(RegistryStatus.NO_RECORD), cfg)["action"] == "greylist"

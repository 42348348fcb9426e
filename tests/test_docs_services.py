"""docs/rating-services.md stays true: every TOML block loads, and the stanzas read the lists' real codes."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path

import pytest

from rspamd_regcheck import DnsAnswer, DnsStatus
from rspamd_regcheck._ratings import read_codes
from rspamd_regcheck._services import DnsService, LocalList, LocalService, parse_local_list
from rspamd_regcheck.config import config_from_mapping

DOC = Path(__file__).parent.parent / "docs" / "rating-services.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), re.DOTALL)


def ratings_txt() -> str:
    (text,) = blocks("text")
    return text


@pytest.fixture
def load(tmp_path):
    (tmp_path / "ratings.txt").write_text(ratings_txt())

    def go(block: str):
        return config_from_mapping(tomllib.loads(block), base_dir=str(tmp_path))

    return go


def test_every_toml_block_loads(load):
    assert len(blocks("toml")) == 7
    for block in blocks("toml"):
        load(block)


def stanzas(load, code: str) -> list[tuple[DnsService, object]]:
    """Every stanza of the page for the list *code* (its own section and the mixed setup)."""
    found = []
    for block in blocks("toml"):
        cfg = load(block)
        for svc in cfg.rating_services:
            if isinstance(svc, DnsService) and svc.code == code:
                found.append((svc, cfg.ratings.services[code]))
    return found


REAL_CODES = [
    # the list, the code it answers, the rating (None: none) and the note's start
    ("DNSWL", "127.0.15.3", "A", ""),
    ("DNSWL", "127.0.2.2", "B", ""),
    ("DNSWL", "127.0.10.1", "C", ""),
    ("DNSWL", "127.0.3.0", "C", ""),
    ("DNSWL", "127.0.0.255", None, "DNSWL:refused"),
    ("DNSWLIP", "127.0.9.3", "A", ""),
    ("DNSWLIP", "127.0.0.255", None, "DNSWLIP:refused"),
    ("DBL", "127.0.1.2", "D", ""),
    ("DBL", "127.0.1.4", "D", ""),
    ("DBL", "127.0.1.5", "D", ""),
    ("DBL", "127.0.1.6", "D", ""),
    ("DBL", "127.0.1.102", "D", ""),
    ("DBL", "127.0.1.106", "D", ""),
    ("DBL", "127.0.1.255", None, "DBL:refused"),
    ("DBL", "127.255.255.252", None, "DBL:refused"),
    ("DBL", "127.255.255.254", None, "DBL:refused"),
    ("DBL", "127.255.255.255", None, "DBL:refused"),
]


@pytest.mark.parametrize("code,answer,rating,note", REAL_CODES, ids=[f"{c}-{a}" for c, a, _, _ in REAL_CODES])
def test_stanzas_read_the_real_codes(load, code, answer, rating, note):
    found = stanzas(load, code)
    assert found
    for svc, scale in found:
        got = read_codes(code, DnsAnswer(DnsStatus.OK, (answer,)), svc.codes, scale, svc.blocked, svc.unlisted)
        assert got.rating == rating
        assert got.note.startswith(note)


def test_the_local_list_example():
    ratings = {"A": 9.0, "B": 7.0, "C": 5.0, "D": 0.0}
    entries = parse_local_list(ratings_txt(), "ratings.txt", ratings)
    lst = LocalList(LocalService("LOCAL", "/nonexistent", entries), ratings)
    ip = ipaddress.ip_address
    assert lst.reading("spammer.example", ip("198.51.100.7")).rating == "D"
    assert lst.reading("other.example", ip("198.51.100.7")).rating == "B"
    assert lst.reading("partner.example", ip("192.0.2.1")).rating == "A"

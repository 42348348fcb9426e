"""contrib/grafana-regcheck.json asks only for what the worker really exports: every metric,
label and label value in its queries is checked against a real worker's /metrics."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import pytest

from rspamd_regcheck._answer import DnsStatus

from rspamd_procs import free_port, start_worker

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "contrib" / "grafana-regcheck.json"
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes
# the event label's values: _metrics.dns_counts() names, and the DNS failure statuses
DNS_EVENTS = {"question", "coalesced", "local", "cache_hit", "cache_miss", "result_reused"} | {
    s.value for s in DnsStatus
}


def queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    return exprs


def parse_exposition(text: str) -> dict[str, set[str]]:
    """Sample name -> the label names it carries, from Prometheus text format."""
    samples: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*?)\})? ", line)
        assert m is not None, line
        labels = set(re.findall(r'(\w+)="', m.group(2) or ""))
        samples.setdefault(m.group(1), set()).update(labels)
    return samples


@pytest.fixture(scope="module")
def exported(knot, tmp_path_factory):
    port = free_port()
    base = tmp_path_factory.mktemp("grafana")
    config = (
        f'[registry]\nzones = ["id.regcheck.test"]\n[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n'
        "[policy]\nlocal_networks = []\n"
    )
    worker = start_worker(base, "worker", config, port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for ip, helo in [("208.20.133.17", "mailout17.heaven.net"), ("208.20.133.32", "mailout32.heaven.net")]:
            conn.request("POST", "/checkv2", body=b"", headers={"IP": ip, "Helo": helo})
            assert conn.getresponse().read()
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    finally:
        worker.stop()
    return parse_exposition(text)


def test_dashboard_is_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"] and all(p["targets"] for p in dash["panels"])
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_every_metric_in_the_dashboard_is_exported(exported):
    for expr in queries():
        names = re.findall(r"\bregcheck_\w+", expr)
        assert names, expr
        for name in names:
            assert name in exported, f"{name} is not exported (exported: {sorted(exported)})"


def test_every_label_in_the_dashboard_is_exported(exported):
    for expr in queries():
        names = set(re.findall(r"\bregcheck_\w+", expr))
        labels = set().union(*(exported[n] for n in names)) | SCRAPE_LABELS
        used = set(re.findall(r"(\w+)\s*=~?\s*\"", expr))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            used.update(x.strip() for x in group.split(","))
        used.update(re.findall(r"label_values\(\w+, (\w+)\)", expr))
        assert used <= labels, f"{expr}: {sorted(used - labels)} not on {sorted(names)}"


def test_event_values_are_ones_the_worker_counts():
    for expr in queries():
        for op, value in re.findall(r'event(=~?)"([^"]*)"', expr):
            values = value.split("|") if op == "=~" else [value]
            assert set(values) <= DNS_EVENTS, expr


def test_parse_exposition():
    text = '# HELP x y\nregcheck_checks_total{protocol="http",verdict="ACCEPT"} 3.0\nregcheck_budget_stops_total 0.0\n'
    assert parse_exposition(text) == {
        "regcheck_checks_total": {"protocol", "verdict"},
        "regcheck_budget_stops_total": set(),
    }

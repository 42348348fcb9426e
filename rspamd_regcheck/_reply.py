"""The reply object of docs/protocol.md, shaped like rspamd's own.  Pure.

``score`` sums the configured scores times the dynamic weights.  ``action``
comes from the score thresholds in score mode and, in enforce mode, is the
enforce decision (`_enforce.enforce`).  That decision is in every reply, in
every mode, as ``regcheck.enforce``::

    "enforce": {"action": "reject" | "soft reject" | "add header" | "no action",
                "message": "550 5.7.1 text" | null}

``message`` is the SMTP reply for reject and soft reject, null otherwise; the
plugin in enforce mode sets both as rspamd's pre-result, unchanged.
"""

from __future__ import annotations

from typing import Any

from ._enforce import Enforcement, EnforcePolicy, enforce
from ._types import Verdict
from .config import Config
from .symbols import BY_NAME


def safe(text: str) -> str:
    """*text* that UTF-8 (so msgpack and JSON alike) can carry: a lone surrogate becomes U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def score_action(score: float, config: Config) -> str:
    """rspamd's action for *score* under the configured thresholds."""
    t = config.thresholds
    if score >= t.reject:
        return "reject"
    if score >= t.add_header:
        return "add header"
    if score >= t.greylist:
        return "greylist"
    return "no action"


def build_reply(
    verdict: Verdict, config: Config, queries: int = 0, enforcement: Enforcement | None = None
) -> dict[str, Any]:
    """The reply for one check, ready for JSON or msgpack.

    :param enforcement: the enforce decision for this message (it depends on the
        recipients); None: decided here as for mail to no protected recipient.
    """
    if enforcement is None:
        enforcement = enforce(verdict, EnforcePolicy.of(config))
    symbols: dict[str, Any] = {}
    total = 0.0
    for hit in verdict.symbols:
        metric = config.scores.get(hit.name, 0.0)
        score = round(metric * hit.weight, 4)
        total += score
        entry: dict[str, Any] = {"name": hit.name, "score": score, "metric_score": metric}
        definition = BY_NAME.get(hit.name)
        if definition is not None:
            entry["description"] = definition.description
        if hit.options:
            entry["options"] = [safe(o) for o in hit.options]
        symbols[hit.name] = entry
    total = round(total, 4)
    seed = verdict.seed
    messages: dict[str, str] = {}
    enforced_message = None if enforcement.message is None else safe(enforcement.message)
    if config.mode == "enforce":
        action = enforcement.action.value
        if enforced_message is not None:
            messages["smtp_message"] = enforced_message
    else:
        action = score_action(total, config)
    ratings = verdict.ratings
    return {
        "is_skipped": verdict.skipped is not None,
        "score": total,
        "required_score": config.thresholds.reject,
        "action": action,
        "symbols": symbols,
        "messages": messages,
        "milter": {
            "add_headers": {name: safe(value) for name, value in verdict.add_headers},
            "remove_headers": {name: 0 for name in verdict.remove_headers},
        },
        "regcheck": {
            "weights": {hit.name: hit.weight for hit in verdict.symbols},
            "verdict": {
                "action": seed.action.value,
                "smtp_code": seed.smtp_code,
                "xcode": seed.xcode,
                "message": safe(seed.message),
            },
            "enforce": {"action": enforcement.action.value, "message": enforced_message},
            "id": None if verdict.id is None else safe(verdict.id),
            "ratings": None
            if ratings is None
            else {
                "class": ratings.klass.value,
                "used": safe(ratings.text),
                "mean": None if ratings.mean is None else round(ratings.mean, 4),
                "min": ratings.low,
                "max": ratings.high,
            },
            "queries": queries,
            "skipped": None if verdict.skipped is None else safe(verdict.skipped),
        },
    }


def format_reply(reply: dict[str, Any]) -> str:
    """Print a reply the way ``rspamc`` prints a scan, plus the seed verdict."""
    lines = [f"Action: {reply['action']}"]
    lines.append(f"Score: {reply['score']:.2f} / {reply['required_score']:.2f}")
    for name in sorted(reply["symbols"]):
        sym = reply["symbols"][name]
        opts = f"[{', '.join(sym['options'])}]" if sym.get("options") else ""
        lines.append(f"Symbol: {name} ({sym['score']:.2f}){opts}")
    rc = reply["regcheck"]
    if rc["skipped"]:
        lines.append(f"Skipped: {rc['skipped']}")
    v = rc["verdict"]
    lines.append(f"Verdict: {v['action']} {v['smtp_code']} {v['xcode']} {v['message']}")
    enforced = rc["enforce"]
    lines.append(f"Enforce: {enforced['action']}" + (f" ({enforced['message']})" if enforced["message"] else ""))
    for name, value in reply["milter"]["add_headers"].items():
        lines.append(f"Header: {name}: {value}")
    return "\n".join(lines)

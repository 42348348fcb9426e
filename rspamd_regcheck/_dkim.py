"""DKIM as a method: rspamd verified the signatures, we only look at their domains.  Pure.

The shim sends the ``d=`` domains of the signatures rspamd verified
(``Dkim-Domain``, repeated); one that is the Registered ID or lies under it
authenticates the ID.  No DNS question is asked here.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._identity import BadHelo, normalise_helo
from ._types import Method, MethodOutcome, Result


def dkim_method(domains: Sequence[str], ident: str) -> MethodOutcome:
    """Pass with the aligned domain as option; none otherwise (not final)."""
    seen = []
    for raw in domains:
        domain = normalise_helo(raw)
        if isinstance(domain, BadHelo):
            continue
        if domain == ident or domain.endswith("." + ident):
            return MethodOutcome(Method.DKIM, Result.PASS, (f"d={domain}",))
        seen.append(domain)
    if not seen:
        return MethodOutcome(Method.DKIM, Result.NONE, ("no verified signature",))
    return MethodOutcome(Method.DKIM, Result.NONE, ("no aligned signature", *(f"d={d}" for d in seen)))

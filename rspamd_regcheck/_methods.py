"""The method table: `Method` -> runner, all with one signature.

A runner is ``async def (ctx: MethodContext) -> MethodOutcome``.  The check
runs the planned methods through `RUNNERS` and nothing else;
tests/test_methods.py checks that every `Method` has a row.  The rows below
adapt the methods written before the table to its signature; a new method
writes ``run(ctx)`` in its own module and adds one row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from ._context import MethodContext
from ._csa import csa_method
from ._dkim import dkim_method
from ._qr1 import qr1
from ._sid import sid_method
from ._spf import spf_method
from ._types import Method, MethodOutcome

Runner = Callable[[MethodContext], Awaitable[MethodOutcome]]


async def _qr1(ctx: MethodContext) -> MethodOutcome:
    return qr1(ctx.record, ctx.ip)


async def _csa(ctx: MethodContext) -> MethodOutcome:
    return await csa_method(ctx.session, ctx.budget, ctx.helo, ctx.ip)


async def _spf(ctx: MethodContext) -> MethodOutcome:
    return await spf_method(
        ctx.session, ctx.budget, ctx.record, ctx.ip, ctx.helo, ctx.ident, ctx.mail_from, ctx.spf_alignment,
        ctx.spf_receiver,
    )  # fmt: skip


async def _sid(ctx: MethodContext) -> MethodOutcome:
    return await sid_method(
        ctx.session, ctx.budget, ctx.record, ctx.ip, ctx.helo, ctx.ident, ctx.headers, ctx.spf_alignment,
        ctx.spf_receiver,
    )  # fmt: skip


async def _dkim(ctx: MethodContext) -> MethodOutcome:
    return dkim_method(ctx.dkim_domains, ctx.ident)


RUNNERS: Mapping[Method, Runner] = {
    Method.QR1: _qr1,
    Method.CSA: _csa,
    Method.SPF: _spf,
    Method.SID: _sid,
    Method.DKIM: _dkim,
}

"""CSA, Client SMTP Authorization (draft-ietf-marid-csv-csa-02; the seed's "CSV").

SRV ``_client._smtp.<HELO>``.  Only records with priority 1 (the CSA
version) count.  Weight 0 or 1: the host is not authorised (fail); 2: it is,
and the client IP must be one of the target's addresses (pass or fail); 3:
authorised but the address cannot be checked (none).  With no record at the
HELO, the parents are asked (at most `MAX_WALK` levels, never the TLD, and
no further than the query budget): a parent record whose port has bit 1 set
says every client under it has its own record, so this host's missing one
is an explicit fail; any other parent record says nothing about this host.
"""

from __future__ import annotations

from ._answer import DnsAnswer, DnsStatus
from ._dns import Budget, Session
from ._types import IPAddress, Method, MethodOutcome, Result

MAX_WALK = 5  # parent levels asked when the HELO has no record
CSA_VERSION = 1  # the SRV priority of a CSA record
PORT_EXPLICIT = 1  # port bit: every client under this name has its own record

SrvRecord = tuple[int, int, int, str]


def _csa_records(answer: DnsAnswer) -> list[SrvRecord]:
    return [r for r in answer.records if r[0] == CSA_VERSION]


def _outcome(result: Result | None, *options: str, budget: bool = False) -> MethodOutcome:
    return MethodOutcome(Method.CSA, result, tuple(options), budget=budget)


def _stopped(answer: DnsAnswer, where: str) -> MethodOutcome | None:
    """The outcome when *answer* ends the method early (budget, DNS failure), else None."""
    if answer.status is DnsStatus.BUDGET:
        return _outcome(None, "CSA", f"{answer.detail} at {where}", budget=True)
    if answer.status.failed:
        return _outcome(Result.TEMPERROR, f"srv={where}", answer.detail or answer.status.value)
    return None


async def csa_method(session: Session, budget: Budget, helo: str, ip: IPAddress) -> MethodOutcome:
    """Run CSA for the HELO name and the client IP."""
    name = f"_client._smtp.{helo}"
    answer = await session.query(name, "SRV", budget)
    stopped = _stopped(answer, name)
    if stopped is not None:
        return stopped
    records = _csa_records(answer) if answer.status is DnsStatus.OK else []
    if records:
        return await _judge(session, budget, name, records[0], ip)
    labels = helo.split(".")
    for level in range(1, min(MAX_WALK, len(labels) - 2) + 1):
        parent = "_client._smtp." + ".".join(labels[level:])
        answer = await session.query(parent, "SRV", budget)
        stopped = _stopped(answer, parent)
        if stopped is not None:
            return stopped
        records = _csa_records(answer) if answer.status is DnsStatus.OK else []
        if records:
            if records[0][2] & PORT_EXPLICIT:
                return _outcome(Result.FAIL, f"srv={parent}", "every client under it has its own record")
            return _outcome(Result.NONE, f"srv={parent}", "parent record says nothing of this host")
    return _outcome(Result.NONE, "no CSA record")


async def _judge(session: Session, budget: Budget, name: str, record: SrvRecord, ip: IPAddress) -> MethodOutcome:
    _, weight, _, target = record
    where = f"srv={name}"
    if weight in (0, 1):
        return _outcome(Result.FAIL, where, f"weight={weight}", "not authorised")
    if weight == 3:
        return _outcome(Result.NONE, where, "weight=3", "authorised, address not asserted")
    if weight != 2:
        return _outcome(Result.NONE, where, f"weight={weight}", "unknown weight")
    if not target or target == ".":
        return _outcome(Result.FAIL, where, "weight=2", "no target")
    answer = await session.query(target, "A" if ip.version == 4 else "AAAA", budget)
    stopped = _stopped(answer, target)
    if stopped is not None:
        return stopped
    if answer.status is DnsStatus.OK and str(ip) in {str(a) for a in answer.records}:
        return _outcome(Result.PASS, where, f"target={target}")
    return _outcome(Result.FAIL, where, f"target={target}", f"{ip} is not an address of the target")

"""What enforce mode does with a verdict: the one home of that rule.  Pure.

The worker decides; the rspamd plugin applies the decision as given (it
reads ``regcheck.enforce`` from the reply), and the worker's log line shows
it in every mode, so watching the log before enforcing tells the truth.
Other front ends (an SMTP-time policy server) call `enforce` the same way.

The rule, in order:

1. A client listed by a DNSBL of the pre-screen: the seed's rejection stands
   (the settings below are about the registry, not about blocklists).
2. No registry record for the ID (``REGCHECK_NO_RECORD``): no action unless
   ``enforce_no_record``.
3. An invalid record (``REGCHECK_RECORD_PERMFAIL``): no action unless
   ``enforce_invalid_record``.
4. DNS trouble (a TEMPFAIL with RFC 3463's 4.4.3, "directory server
   failure"): a soft reject, or no action when ``enforce_tempfail`` is off.
5. REJECT -> reject, TEMPFAIL -> soft reject, FILTER -> add header; ACCEPT
   and CONTINUE -> no action (the rest of rspamd decides).
6. A reject or soft reject of mail to a protected local part (``postmaster``,
   ``abuse``: RFC 5321 4.5.1, RFC 2142) becomes add header, for the whole
   message, as one SMTP transaction cannot reject some recipients here.

The SMTP text is the seed verdict's, which the evaluator writes without
internal details (a resolver's address stays in the log).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import symbols as S
from ._evaluate import TEMPFAIL_DNS_X
from ._types import Action, Verdict

if TYPE_CHECKING:
    from .config import Config


class EnforceAction(enum.Enum):
    """The action enforce mode takes, spelt as rspamd spells its actions."""

    REJECT = "reject"
    SOFT_REJECT = "soft reject"
    ADD_HEADER = "add header"
    NO_ACTION = "no action"


@dataclass(frozen=True)
class EnforcePolicy:
    """The receiver's enforce settings (``[policy]`` of the worker's config)."""

    no_record: bool = False
    invalid_record: bool = False
    tempfail: bool = True
    never_reject: tuple[str, ...] = ("postmaster", "abuse")  # lower-case local parts

    @classmethod
    def of(cls, config: Config) -> EnforcePolicy:
        """The policy ``[policy]`` of *config* sets."""
        return cls(
            config.enforce_no_record, config.enforce_invalid_record, config.enforce_tempfail, config.never_reject
        )


@dataclass(frozen=True)
class Enforcement:
    """One decision: the action and, for reject and soft reject, the SMTP reply.

    ``smtp_code`` (550 or 451), ``xcode`` (RFC 3463, ``5.7.1``) and ``text``
    are None for add header and no action (the mail is accepted).
    """

    action: EnforceAction
    smtp_code: int | None = None
    xcode: str | None = None
    text: str | None = None

    @property
    def message(self) -> str | None:
        """The SMTP reply line, ``"550 5.7.1 text"``; None when the mail is accepted."""
        if self.smtp_code is None:
            return None
        return f"{self.smtp_code} {self.xcode} {self.text}"


NO_ACTION = Enforcement(EnforceAction.NO_ACTION)
ADD_HEADER = Enforcement(EnforceAction.ADD_HEADER)
_ACTIONS = {
    Action.REJECT: EnforceAction.REJECT,
    Action.TEMPFAIL: EnforceAction.SOFT_REJECT,
    Action.FILTER: EnforceAction.ADD_HEADER,
}


def enforce(verdict: Verdict, policy: EnforcePolicy, rcpts: Sequence[str] = ()) -> Enforcement:
    """The action enforce mode takes for *verdict*, under *policy*, for mail to *rcpts*.

    :param verdict: the check's verdict (its seed verdict and symbols).
    :param policy: the receiver's enforce settings.
    :param rcpts: the envelope recipients (``user@domain`` or a bare ``postmaster``).
    :returns: an `Enforcement`; ``NO_ACTION`` means "let the rest of the filter decide".
    """
    seed = verdict.seed
    names = {hit.name for hit in verdict.symbols}
    if S.DNSBL not in names:
        if S.NO_RECORD in names and not policy.no_record:
            return NO_ACTION
        if S.RECORD_PERMFAIL in names and not policy.invalid_record:
            return NO_ACTION
    if seed.action is Action.TEMPFAIL and seed.xcode == TEMPFAIL_DNS_X and not policy.tempfail:
        return NO_ACTION
    action = _ACTIONS.get(seed.action, EnforceAction.NO_ACTION)
    if action is EnforceAction.NO_ACTION:
        return NO_ACTION
    if action is EnforceAction.ADD_HEADER or protected(rcpts, policy.never_reject):
        return ADD_HEADER
    return Enforcement(action, seed.smtp_code, seed.xcode, seed.message)


def protected(rcpts: Sequence[str], local_parts: Sequence[str]) -> bool:
    """True when a recipient's local part (case-insensitive) is one of *local_parts*."""
    for rcpt in rcpts:
        local = rcpt.rpartition("@")[0] if "@" in rcpt else rcpt
        if local.lower() in local_parts:
            return True
    return False


__all__ = ["ADD_HEADER", "NO_ACTION", "EnforceAction", "EnforcePolicy", "Enforcement", "enforce", "protected"]

"""Judge one attempt: per-recipient verdicts in, the attempt's outcome and the relay's lesson out.

An attempt sends one message through one relay. Its replies were classified per
recipient (app/domain/replies.py); this module alone decides what they add up to:

- the attempt's outcome, as recorded and shown (sent, partial, failover, rejected,
  unknown, deferred; maintenance and recycled where the provider said so);
- what the relay's circuit learns (a success, a failure, an authentication failure that
  opens it at once, a throttle that cools it down, or nothing);
- whether the attempt proved the relay works, so more messages may use it at once
  (slow start), disproved it, or said nothing about it;
- where each recipient goes next: delivered, rejected for good, on to the next relay,
  or retried later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from app.domain.replies import Action, Verdict


class Lesson(StrEnum):
    """What a relay's circuit learns from an attempt."""

    SUCCESS = "success"  # it delivered: failures reset, a half-open circuit closes
    FAILURE = "failure"  # a server-level failure: counts towards opening the circuit
    AUTH_FAILURE = "auth_failure"  # its login was refused: the circuit opens at once
    THROTTLE = "throttle"  # it asked us to slow down: cool it down for a while
    NOTHING = "nothing"  # message- or recipient-level results say nothing of the relay


@dataclass(frozen=True)
class Judgement:
    """What one attempt adds up to."""

    outcome: (
        str  # sent | partial | failover | rejected | unknown | deferred | maintenance | recycled
    )
    lesson: Lesson
    proved: bool | None  # True: the relay works; False: it does not; None: no news
    reason: str  # the verdict that speaks for the relay (its last error, the failover reason)
    delivered: tuple[str, ...] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)  # recipient → why, for good
    fail_over: tuple[str, ...] = ()  # recipients for the next relay, in this pass
    retry: Mapping[str, str] = field(default_factory=dict)  # recipient → why, later
    unknown: tuple[str, ...] = ()  # recipients whose reply was lost after the final dot
    recycle: tuple[str, ...] = ()  # recipients to send again on a fresh session, now
    maintenance: bool = False  # the relay said it is in maintenance


def _relay_verdict(overall: Verdict, verdicts: Mapping[str, Verdict]) -> Verdict:
    """Pick the verdict that speaks for the relay, whatever the recipients' order.

    A server-level refusal of any recipient counts against the relay; failing that, a
    throttle does; a mailbox refusal never does.
    """
    chosen = overall
    for verdict in verdicts.values():
        if verdict.breaker_failure:
            return verdict
        if verdict.action == Action.THROTTLED and not chosen.breaker_failure:
            chosen = verdict
    return chosen


def judge(verdicts: Mapping[str, Verdict], overall: Verdict) -> Judgement:
    """Judge an attempt from its verdict per recipient and its overall (final) verdict.

    A session that failed as a whole (refused, lost, timed out) gives every recipient
    the same verdict, which is also the overall one.
    """
    actions = {verdict.action for verdict in verdicts.values()} or {overall.action}
    relay = _relay_verdict(overall, verdicts)
    delivered = tuple(r for r, v in verdicts.items() if v.action == Action.DELIVERED)
    rejected = {r: v.reason for r, v in verdicts.items() if v.action == Action.REJECT}
    fail_over = tuple(r for r, v in verdicts.items() if v.fails_over)
    retry = {r: v.reason for r, v in verdicts.items() if v.action in (Action.RETRY, Action.UNKNOWN)}
    unknown = tuple(r for r, v in verdicts.items() if v.action == Action.UNKNOWN)
    recycle = tuple(r for r, v in verdicts.items() if v.action == Action.RECYCLE)

    if delivered:
        outcome = "sent" if len(actions) == 1 else "partial"
    elif relay.action == Action.MAINTENANCE:
        outcome = "maintenance"
    elif recycle:
        outcome = "recycled"
    elif relay.fails_over:
        outcome = "failover"
    elif Action.REJECT in actions:
        outcome = "rejected"
    elif Action.UNKNOWN in actions:
        outcome = "unknown"
    else:
        outcome = "deferred"

    if delivered:
        lesson = Lesson.SUCCESS
    elif relay.action == Action.AUTH_FAILED:
        lesson = Lesson.AUTH_FAILURE
    elif relay.breaker_failure:
        lesson = Lesson.FAILURE
    elif relay.action == Action.THROTTLED:
        lesson = Lesson.THROTTLE
    else:
        lesson = Lesson.NOTHING

    proved: bool | None
    if delivered:
        proved = True
    elif lesson in (Lesson.FAILURE, Lesson.AUTH_FAILURE, Lesson.THROTTLE):
        proved = False
    elif Action.REJECT in actions:
        proved = True  # it answered for each recipient: working, if not for them
    else:
        proved = None  # a lost reply or a message-level retry says nothing of the relay

    return Judgement(
        outcome=outcome,
        lesson=lesson,
        proved=proved,
        reason=relay.reason,
        delivered=delivered,
        rejected=rejected,
        fail_over=fail_over,
        retry=retry,
        unknown=unknown,
        recycle=recycle,
        maintenance=relay.action == Action.MAINTENANCE,
    )


def passed_on(recipients: Sequence[str], reason: str) -> Judgement:
    """Judge a relay that could not take the message at all: no attempt, nothing learned.

    Its pool refused (it is busy proving itself, or its circuit just opened): the
    recipients go on to the next relay.
    """
    return Judgement(
        outcome="failover",
        lesson=Lesson.NOTHING,
        proved=None,
        reason=reason,
        fail_over=tuple(recipients),
    )

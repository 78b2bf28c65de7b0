"""What a DPMQ consumer receives, whichever way it receives it: a :class:`Message`, or a
:class:`Gap` where messages were gone.

Both the push :class:`dpmq.client.Consumer` and the :class:`dpmq.pull_client.PullConsumer` build
them from the broker's JSON here, so a program sees one shape whatever the transport, and a gap is
never passed off as a message.
"""

import dataclasses
import logging

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Message:
    """One pushed message. ``status`` counts earlier delivery attempts (0 the first time)."""

    code: str
    data: str
    topic: str
    create_time: str
    status: int
    raw: dict


@dataclasses.dataclass(frozen=True)
class Gap:
    """Messages a subscription never received and never will: they were gone when it resumed.

    ``missed`` counts them (as far as the broker can tell), ``after`` is the last MessageCode the
    subscription had (None: none), ``resume`` the code it resumes at, ``reason`` ``"purged"``
    (retention), ``"forgotten"`` (the subscription was idle past retention) or ``"lost"`` (the
    store lost them)."""

    topic: str
    missed: int
    after: str | None
    resume: str | None
    reason: str
    raw: dict


def as_message(body):
    return Message(body["MessageCode"], body["MessageData"], body["Topic"], body["CreateTime"],
                   body["Status"], body)


def report_gap(on_gap, body, who):
    """Hand a gap notice to ``on_gap``; without one, log it, so that lost messages are never
    silent."""
    gap = Gap(body.get("Topic"), body.get("Missed", 0), body.get("After"), body.get("Resume"),
              body.get("Reason", ""), body)
    if on_gap is not None:
        on_gap(gap)
    else:
        log.warning("DPMQ consumer %s: missed %s messages of %s (%s) after %s; resuming at %s",
                    who, gap.missed, gap.topic, gap.reason, gap.after, gap.resume)

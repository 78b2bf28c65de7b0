"""Subscriptions belong to someone: with auth on, a consumerId or group is its creator's.

The attack this stops: a token that may read a topic connected as another identity's consumerId
and received what was kept for it while its owner was away (and the owner then got 4409).
"""

import pytest

from helpers import Collector, wait_for

OWNER, OTHER, GRANTED, ADMIN, PRODUCER = ("owner-secret-1", "other-secret-1", "grant-secret-1",
                                          "admin-secret-1", "prod-secret-1")
TOKENS = [{"token": OWNER, "role": "consumer"},
          {"token": OTHER, "role": "consumer", "topics": ["orders.*"]},
          {"token": GRANTED, "role": "consumer", "consumers": ["audit-*", "shared-*"]},
          {"token": ADMIN, "role": "admin"},
          {"token": PRODUCER, "role": "producer"}]
AUTH = {"enabled": True, "tokens": TOKENS}


def _connect(running, consumer_id, token, query="", topic="orders.eu"):
    return Collector(running.ws_url, topic, consumer_id, f"?token={token}{query}")


def _joined(running, consumer_id):
    wait_for(lambda: any(m.consumer_id == consumer_id for m in running.broker.members()),
             what=f"{consumer_id} to join")


def _left(running, collector):
    collector.close()
    wait_for(lambda: not running.broker.members(), what="the consumers to leave")


def _refused(collector):
    wait_for(lambda: collector.closed, what=f"{collector.url} to be closed by the broker")
    return collector.closed


def _publish(running, *datas, topic="orders.eu"):
    for data in datas:
        reply = running.http.post(running.url + "/ProducerSend",
                                  headers={"Authorization": f"Bearer {PRODUCER}"},
                                  data={"topic": topic, "messageData": data}).json()
        assert reply["code"] == 0, reply


@pytest.fixture
def locked(make_broker, engine_name):
    return make_broker(engine_name, auth=AUTH)


def test_another_token_cannot_take_a_consumer_id_and_what_waits_for_it(locked):
    owner = _connect(locked, "audit", OWNER)
    _joined(locked, "audit")
    _left(locked, owner)
    _publish(locked, "m1", "m2", "m3")

    thief = _connect(locked, "audit", OTHER)
    code, reason = _refused(thief)
    assert code == 4403 and "belongs to someone else" in reason
    assert reason.endswith("tokens[].consumers"), "the whole reason fits in a close frame"
    assert thief.messages == [] and not locked.broker.members()

    owner = _connect(locked, "audit", OWNER)
    assert [m["MessageData"] for m in owner.wait_count(3)] == ["m1", "m2", "m3"]
    thief = _connect(locked, "audit", OTHER)            # while the owner is connected: 4403 too
    assert _refused(thief)[0] == 4403
    _publish(locked, "m4")
    owner.wait_count(4)
    assert owner.closed is None and thief.messages == []
    owner.close()


def test_an_admin_may_take_any_subscription_and_the_owner_keeps_it(locked):
    _left(locked, _connect(locked, "audit", OWNER))
    _publish(locked, "m1")
    admin = _connect(locked, "audit", ADMIN)
    assert admin.wait_count(1)[0]["MessageData"] == "m1"
    _left(locked, admin)
    _publish(locked, "m2")
    owner = _connect(locked, "audit", OWNER)
    assert owner.wait_count(1)[0]["MessageData"] == "m2"
    _left(locked, owner)
    assert _refused(_connect(locked, "audit", OTHER))[0] == 4403


def test_a_token_granted_a_pattern_may_take_those_ids_only(locked):
    for consumer_id in ("audit-1", "audit"):
        _left(locked, _connect(locked, consumer_id, OWNER))
    _publish(locked, "m1")
    granted = _connect(locked, "audit-1", GRANTED)
    assert granted.wait_count(1)[0]["MessageData"] == "m1"
    code, reason = _refused(_connect(locked, "audit", GRANTED))
    assert code == 4403 and "belongs to someone else" in reason
    granted.close()


def test_a_group_belongs_to_its_creator_too(locked):
    for group in ("team", "shared-team"):
        _left(locked, _connect(locked, "w1", OWNER, f"&group={group}"))
    _publish(locked, "m1")
    code, reason = _refused(_connect(locked, "w2", OTHER, "&group=team"))
    assert code == 4403 and "group belongs to someone else" in reason
    assert _refused(_connect(locked, "w2", GRANTED, "&group=team"))[0] == 4403
    granted = _connect(locked, "w2", GRANTED, "&group=shared-team")
    assert granted.wait_count(1)[0]["MessageData"] == "m1"
    second = _connect(locked, "w3", OWNER, "&group=shared-team")    # the owner's members join
    _joined(locked, "w3")
    assert second.closed is None
    for collector in (granted, second):
        collector.close()


def test_ids_are_owned_per_topic(locked):
    _left(locked, _connect(locked, "audit", OWNER))
    mine = _connect(locked, "audit", OTHER, topic="orders.us")
    _joined(locked, "audit")
    assert mine.closed is None
    mine.close()


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_ownership_survives_a_restart(make_broker, engine):
    if engine == "redis":
        from helpers import require_redis
        require_redis()
    first = make_broker(engine, auth=AUTH)
    _left(first, _connect(first, "audit", OWNER))
    _publish(first, "kept")
    first.stop()
    again = make_broker(engine, auth=AUTH, storage={"prefix": first.settings.storage.prefix})
    assert _refused(_connect(again, "audit", OTHER))[0] == 4403
    owner = _connect(again, "audit", OWNER)
    assert owner.wait_count(1)[0]["MessageData"] == "kept"
    owner.close()


def test_with_auth_off_anyone_may_use_any_id(make_broker):
    running = make_broker("sqlite")
    _left(running, Collector(running.ws_url, "orders.eu", "audit"))
    running.publish("orders.eu", "m1")
    again = Collector(running.ws_url, "orders.eu", "audit")
    assert again.wait_count(1)[0]["MessageData"] == "m1"
    again.close()


def test_a_subscription_made_with_auth_off_goes_to_the_first_token_after(make_broker):
    running = make_broker("sqlite")
    _left(running, Collector(running.ws_url, "orders.eu", "audit"))
    running.stop()
    locked = make_broker("sqlite", auth=AUTH)
    _left(locked, _connect(locked, "audit", OWNER))
    assert _refused(_connect(locked, "audit", OTHER))[0] == 4403

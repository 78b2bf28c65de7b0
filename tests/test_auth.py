"""Auth: tokens, roles, topic patterns, on HTTP and WebSocket; health probes stay open."""

import pytest

from dpmq.client import WebSocketClient as Client

from helpers import Collector, connect_and_close_code, wait_for

TOKENS = [{"token": "p-secret-1", "role": "producer", "topics": ["orders.*"]},
          {"token": "c-secret-1", "role": "consumer"},
          {"token": "a-secret-1", "role": "admin"}]


@pytest.fixture
def locked(make_broker, engine_name):
    return make_broker(engine_name, auth={"enabled": True, "tokens": TOKENS})


def _publish(running, token=None, topic="orders.eu"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return running.http.post(running.url + "/ProducerSend", headers=headers,
                             data={"topic": topic, "messageData": "x"})


def test_publish_needs_a_producer_token_for_the_topic(locked):
    for token, status in [(None, 401), ("wrong-token", 401), ("c-secret-1", 403)]:
        reply = _publish(locked, token)
        assert reply.status_code == status, token
        assert reply.json()["code"] == -1 and reply.json()["msg"]
    assert _publish(locked, "p-secret-1", topic="billing").status_code == 403
    assert _publish(locked, "p-secret-1").json()["code"] == 0
    assert _publish(locked, "a-secret-1", topic="anything").json()["code"] == 0
    assert locked.broker.engine.heads() == {"orders.eu": 1, "anything": 1}


def test_batch_publish_checks_every_topic(locked):
    reply = locked.http.post(locked.url + "/ProducerSendBatch",
                             headers={"Authorization": "Bearer p-secret-1"},
                             json={"messages": [{"topic": "orders.a", "messageData": "1"},
                                                {"topic": "secret", "messageData": "2"}]})
    assert reply.status_code == 403 and locked.broker.engine.head("orders.a") == 0


def test_consumers_need_a_consumer_token_by_header_or_query(locked):
    code, reason = connect_and_close_code(locked.ws_url, "/ConsumersConn/orders.eu/c")
    assert code == 4401 and "token" in reason
    code, _ = connect_and_close_code(locked.ws_url, "/ConsumersConn/orders.eu/c?token=nope-nope")
    assert code == 4401
    code, _ = connect_and_close_code(locked.ws_url, "/ConsumersConn/orders.eu/c?token=p-secret-1")
    assert code == 4403
    by_query = Collector(locked.ws_url, "orders.eu", "q", "?token=c-secret-1")
    by_header = Client.connect(locked.ws_url + "/ConsumersConn/orders.eu/h",
                               headers={"Authorization": "Bearer c-secret-1"})
    wait_for(lambda: len(locked.broker.members()) == 2, what="two consumers")
    assert _publish(locked, "p-secret-1").json()["code"] == 0
    by_query.wait_count(1)
    assert by_header.receive(timeout=5)
    by_header.close()


def test_console_and_metrics_need_admin(locked):
    for path in ("/Console/GetConsumers", "/Console/GetConfig", "/Console/Ping"):
        assert locked.http.get(locked.url + path).status_code == 401
        assert locked.http.get(locked.url + path,
                               headers={"Authorization": "Bearer c-secret-1"}).status_code == 403
        assert locked.http.get(locked.url + path,
                               headers={"Authorization": "Bearer a-secret-1"}).status_code == 200


def test_get_config_never_shows_a_secret(locked):
    text = locked.http.get(locked.url + "/Console/GetConfig",
                           headers={"Authorization": "Bearer a-secret-1"}).text
    assert "secret-1" not in text and "***" in text


def test_health_probes_stay_open(locked):
    assert locked.http.get(locked.url + "/healthz").json() == {"code": 0, "msg": "ok"}
    ready = locked.http.get(locked.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["code"] == 0


def test_readyz_fails_while_shutting_down(make_broker):
    running = make_broker("memory")
    running.broker.accepting = False
    reply = running.http.get(running.url + "/readyz")
    assert reply.status_code == 503 and reply.json()["code"] == -1
    running.broker.accepting = True


def test_tokens_from_the_environment_join_the_file():
    from dpmq import config
    settings = config.load(environ={"DPMQ_AUTH_ENABLED": "true",
                                    "DPMQ_AUTH_TOKENS": "producer:env-token-1:orders.* admin:env-admin-1"})
    assert [(t.role, t.topics) for t in settings.auth.tokens] == [("producer", ("orders.*",)),
                                                                  ("admin", ())]
    with pytest.raises(Exception, match="auth.tokens"):
        config.build({"auth": {"tokens": [{"token": "short", "role": "admin"}]}})


def test_cors_allows_only_the_configured_origins(make_broker):
    running = make_broker("memory", server={"corsOrigins": ["http://shop.example"]})
    allowed = running.http.options(running.url + "/ProducerSend",
                                   headers={"Origin": "http://shop.example",
                                            "Access-Control-Request-Method": "POST"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://shop.example"
    other = running.http.post(running.url + "/ProducerSend", headers={"Origin": "http://evil.example"},
                              data={"topic": "t", "messageData": "x"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_auth_is_off_by_default_and_says_so(make_broker, caplog):
    running = make_broker("memory")
    assert _publish(running).json()["code"] == 0
    assert any("auth is off" in record.getMessage() for record in caplog.records)



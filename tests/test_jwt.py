"""JWT auth beside the static tokens: HS256, RS256 from a JWKS file and a PEM key, ES256; every
refusal names its cause without the token; consumers closed when their token expires, unless they
send a fresh one in time."""

import json
import threading
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dpmq import config
from dpmq.errors import ConfigError

from helpers import (
    Collector,
    EventStreamCollector,
    ServedBroker,
    connect_and_close_code,
    wait_for,
)

SECRET = "an-hmac-secret-of-at-least-32-bytes!"
STATIC = [{"token": "static-admin-1", "role": "admin"}]
JWT = {"secret": SECRET, "audience": "dpmq", "issuer": "https://auth.example", "leeway": 0}


def mint(role="producer", topics=None, sub="alice", ttl=60, key=SECRET, algorithm="HS256",
         headers=None, **claims):
    body = {"sub": sub, "aud": "dpmq", "iss": "https://auth.example", "exp": int(time.time() + ttl)}
    if role is not None:
        body["dpmq"] = {"role": role, **({"topics": topics} if topics else {})}
    body.update(claims)
    for name in [name for name, value in body.items() if value is None]:
        del body[name]
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def locked(make_broker):
    return make_broker("sqlite", auth={"enabled": True, "tokens": STATIC, "jwt": JWT})


def _send(running, token, topic="orders.eu"):
    return running.http.post(running.url + "/ProducerSend", headers=bearer(token),
                             data={"topic": topic, "messageData": "x"})


def _refused(reply, status, *words):
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["code"] == -1
    for word in words:
        assert word in body["msg"], body["msg"]
    return body["msg"]


def _bad_tokens():
    """(token, status, words of the cause) for every way a token is refused."""
    good = mint(topics=["orders.*"])
    header, payload, signature = good.split(".")
    tampered_payload = jwt.utils.base64url_encode(json.dumps(
        {**jwt.decode(good, options={"verify_signature": False}), "sub": "mallory"}).encode())
    return [
        (mint(ttl=-30), 401, ("expired",)),
        (f"{header}.{tampered_payload.decode()}.{signature}", 401, ("bad signature",)),
        (mint(key="another-secret-of-at-least-32-bytes!!"), 401, ("bad signature",)),
        (mint(aud="someone-else"), 401, ("wrong audience",)),
        (mint(iss="https://evil.example"), 401, ("wrong issuer",)),
        (mint(exp=None), 401, ("no exp",)),
        (mint(role=None), 403, ("no role",)),
        (mint(role="consumer"), 403, ("producer role",)),
        (mint(topics=["billing.*"]), 403, ("topic not allowed",)),
    ]


def test_publish_with_jwts_and_every_refusal_names_its_cause(locked):
    assert _send(locked, mint(topics=["orders.*"])).json()["code"] == 0
    assert _send(locked, mint(role="admin"), topic="anything").json()["code"] == 0
    assert _send(locked, "static-admin-1").json()["code"] == 0          # static tokens still work
    for token, status, words in _bad_tokens():
        assert token not in _refused(_send(locked, token), status, *words)
    assert locked.broker.engine.heads() == {"orders.eu": 2, "anything": 1}


def test_batch_publish_checks_every_topic_of_the_jwt(locked):
    def batch(token, *topics):
        return locked.http.post(locked.url + "/ProducerSendBatch", headers=bearer(token),
                                json={"messages": [{"topic": t, "messageData": "1"} for t in topics]})
    token = mint(topics=["orders.*"])
    assert len(batch(token, "orders.a", "orders.b").json()["data"]) == 2
    _refused(batch(token, "orders.a", "secret"), 403, "topic not allowed")
    _refused(batch(mint(ttl=-30), "orders.a"), 401, "expired")


def test_console_needs_an_admin_jwt_and_never_shows_the_secret(locked):
    path = locked.url + "/Console/GetConfig"
    _refused(locked.http.get(path, headers=bearer(mint(role="consumer"))), 403, "admin")
    reply = locked.http.get(path, headers=bearer(mint(role="admin")))
    assert reply.status_code == 200 and SECRET not in reply.text
    assert reply.json()["data"]["auth"]["jwt"]["secret"] == "***"
    assert reply.json()["data"]["auth"]["jwt"]["algorithms"] == ["HS256"]


def test_websocket_consumer_refusals_are_4401_and_4403(locked):
    for token, status, words in _bad_tokens():
        if "producer role" in words:
            continue            # a producer token; a consumer's other roles are checked below
        token = token if status == 401 else mint(role="consumer" if "no role" not in words
                                                 else None, topics=["billing.*"])
        code, reason = connect_and_close_code(locked.ws_url,
                                              f"/ConsumersConn/orders.eu/c?token={token}")
        assert code == 4400 + status % 100 and token not in reason, (code, reason)
        assert any(word in reason for word in words + ("no role", "topic not allowed")), reason


def test_pull_and_ack_take_a_consumer_jwt(locked):
    token = mint(role="consumer", topics=["orders.*"])
    pull = {"topic": "orders.eu", "consumerId": "p", "max": 5, "wait": 0}
    reply = locked.http.post(locked.url + "/ConsumerPull", headers=bearer(token), json=pull)
    assert reply.json()["code"] == 0, reply.text
    _send(locked, mint(topics=["orders.*"]))
    reply = locked.http.post(locked.url + "/ConsumerPull", headers=bearer(token), json=pull)
    (message,) = reply.json()["data"]
    ack = {"topic": "orders.eu", "consumerId": "p", "messageCode": message["MessageCode"]}
    assert locked.http.post(locked.url + "/ConsumerAck", headers=bearer(token),
                            json=ack).json()["code"] == 0
    for bad, status, word in [(mint(role="consumer", ttl=-30), 401, "expired"),
                              (mint(role="consumer", topics=["billing"]), 403, "topic not allowed"),
                              (mint(role="consumer", aud="x"), 401, "wrong audience")]:
        for path, body in (("/ConsumerPull", pull), ("/ConsumerAck", ack)):
            msg = _refused(locked.http.post(locked.url + path, headers=bearer(bad), json=body),
                           status, word)
            assert bad not in msg


def test_the_subscription_belongs_to_the_jwts_subject(locked):
    first = Collector(locked.ws_url, "orders.eu", "mine", f"?token={mint(role='consumer')}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="the consumer")
    first.close()
    wait_for(lambda: not locked.broker.members(), what="the consumer to leave")
    again = Collector(locked.ws_url, "orders.eu", "mine", f"?token={mint(role='consumer')}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="the same subject again")
    again.close()
    wait_for(lambda: not locked.broker.members(), what="the consumer to leave")
    code, reason = connect_and_close_code(
        locked.ws_url, f"/ConsumersConn/orders.eu/mine?token={mint(role='consumer', sub='bob')}")
    assert code == 4403 and "belongs" in reason


# -- expiry and refresh ----------------------------------------------------------------------
def test_a_websocket_consumer_is_closed_when_its_jwt_expires(locked):
    consumer = Collector(locked.ws_url, "orders.eu", "c",
                         f"?token={mint(role='consumer', ttl=1.5)}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="the consumer")
    _send(locked, mint())
    consumer.wait_count(1)
    wait_for(lambda: consumer.closed is not None, timeout=5, what="the close on expiry")
    code, reason = consumer.closed
    assert code == 4401 and "expired" in reason
    wait_for(lambda: not locked.broker.members(), what="the consumer to be gone")
    assert not len(locked.app.extensions["dpmq_auth"].expiry)


def test_a_fresh_token_frame_keeps_the_consumer_open(locked):
    consumer = Collector(locked.ws_url, "orders.eu", "c",
                         f"?token={mint(role='consumer', ttl=1.5)}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="the consumer")
    consumer.send(json.dumps({"token": mint(role="consumer", ttl=60)}))
    time.sleep(2.5)
    assert consumer.closed is None and not consumer.errors
    _send(locked, mint())
    assert consumer.wait_count(1)
    consumer.close()


def test_a_token_frame_works_with_acks_and_a_bad_one_closes(locked):
    consumer = Collector(locked.ws_url, "orders.eu", "c", f"?ack=1&token={mint(role='consumer')}",
                         auto_ack=True)
    wait_for(lambda: len(locked.broker.members()) == 1, what="the consumer")
    consumer.send(json.dumps({"token": mint(role="consumer")}))
    _send(locked, mint())
    consumer.wait_count(1)
    assert not consumer.errors
    other = mint(role="consumer", sub="bob")
    consumer.send(json.dumps({"token": other}))
    wait_for(lambda: consumer.closed is not None, timeout=5, what="the close")
    assert consumer.closed[0] == 4403 and "another identity" in consumer.closed[1]

    expired = Collector(locked.ws_url, "orders.eu", "d", f"?token={mint(role='consumer')}")
    stale = mint(role="consumer", ttl=-30)
    expired.send(json.dumps({"token": stale}))
    wait_for(lambda: expired.closed is not None, timeout=5, what="the close")
    assert expired.closed[0] == 4401 and "expired" in expired.closed[1]
    assert stale not in expired.closed[1]


def test_an_event_stream_ends_with_an_error_when_its_jwt_expires(locked):
    token = mint(role="consumer", ttl=1.5)
    stream = EventStreamCollector(locked.port, f"/ConsumersConn/orders.eu/s?token={token}")
    assert stream.status == 200
    _send(locked, mint())
    stream.wait_count(1)
    wait_for(lambda: stream.ended, timeout=5, what="the stream's end")
    kinds = [kind for kind, _ in stream.events]
    assert kinds[-2:] == ["error", "close"], stream.events
    assert "expired" in stream.events[-2][1]["error"] and stream.events[-1][1]["code"] == 4401
    for token, status, words in [(mint(role="consumer", ttl=-5), 401, "expired"),
                                 (mint(role="consumer", topics=["x"]), 403, "topic not allowed")]:
        refused = EventStreamCollector(locked.port, f"/ConsumersConn/orders.eu/s?token={token}")
        assert refused.status == status and words in refused.refusal
        assert token not in refused.refusal


# -- keys ------------------------------------------------------------------------------------
def _rsa_jwks(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [dict(public, kid="k1")]}))
    return key


def test_rs256_from_a_jwks_file_chosen_by_kid(make_broker, tmp_path):
    key = _rsa_jwks(tmp_path)
    running = make_broker("sqlite", auth={"enabled": True, "jwt": {
        "algorithms": ["RS256"], "jwks": str(tmp_path / "jwks.json"), "audience": "dpmq"}})
    good = mint(key=key, algorithm="RS256", headers={"kid": "k1"})
    assert _send(running, good).json()["code"] == 0
    _refused(_send(running, mint(key=key, algorithm="RS256", headers={"kid": "k2"})), 401, "kid")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _refused(_send(running, mint(key=other, algorithm="RS256", headers={"kid": "k1"})), 401,
             "bad signature")
    _refused(_send(running, mint()), 401, "HS256")     # an HMAC token: not accepted here
    consumer = Collector(running.ws_url, "orders.eu", "c", "?token=" + mint(
        role="consumer", key=key, algorithm="RS256", headers={"kid": "k1"}))
    wait_for(lambda: len(running.broker.members()) == 1, what="the consumer")
    _send(running, good)
    consumer.wait_count(1)
    consumer.close()


def test_es256_from_a_pem_public_key(make_broker, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    running = make_broker("sqlite", auth={"enabled": True, "jwt": {
        "algorithms": ["ES256"], "publicKey": str(tmp_path / "ec.pem")}})
    assert _send(running, mint(key=key, algorithm="ES256", aud=None, iss=None)).json()["code"] == 0
    tampered = mint(key=key, algorithm="ES256", aud=None, iss=None, sub="x")[:-4] + "AAAA"
    _refused(_send(running, tampered), 401, "signature")


class _LockedServedBroker(ServedBroker):
    """``dpmq serve`` with auth on: up once /healthz answers (/Console/Ping needs a token)."""

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dpmq serve exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False


def test_publish_through_the_gunicorn_worker_checks_jwts(tmp_path):
    running = _LockedServedBroker(tmp_path, auth={"enabled": True, "jwt": JWT}).start()
    try:
        _publish_through(running)
    finally:
        running.stop()


def _publish_through(running):
    ok = requests.post(running.url + "/ProducerSend", headers=bearer(mint(topics=["orders.*"])),
                       data={"topic": "orders.eu", "messageData": "x"}, timeout=10)
    assert ok.json()["code"] == 0, ok.text
    for token, status, words in _bad_tokens():
        for path, kwargs in (("/ProducerSend", {"data": {"topic": "orders.eu", "messageData": "x"}}),
                             ("/ProducerSendBatch", {"json": {"topic": "orders.eu",
                                                              "messages": ["a"]}})):
            reply = requests.post(running.url + path, headers=bearer(token), timeout=10, **kwargs)
            assert token not in _refused(reply, status, *words)


# -- configuration ---------------------------------------------------------------------------
def _build(jwt_section, environ=None, tmp_path=None):
    if environ is None:
        return config.build({"auth": {"enabled": True, "jwt": jwt_section}})
    path = tmp_path / "application.yaml"
    path.write_text(json.dumps({"auth": {"enabled": True, "jwt": jwt_section}}))
    return config.load(str(path), environ=environ)


@pytest.mark.parametrize("section, words", [
    ({"algorithms": ["HS256"]}, "no key"),
    ({"algorithms": ["HS256"], "publicKey": "/nonexistent.pem"}, "HS256 but auth.jwt.secret"),
    ({"algorithms": ["RS256"], "secret": SECRET}, "RS256 but neither"),
    ({"publicKey": "/nonexistent/key.pem"}, "cannot read"),
    ({"jwks": "/nonexistent/jwks.json"}, "cannot read"),
    ({"secret": "short"}, "at least 32 bytes"),
    ({"secret": SECRET, "algorithms": ["none"]}, "'none' is not one of"),
    ({"secret": SECRET, "audiance": "x"}, "did you mean auth.jwt.audience"),
])
def test_bad_jwt_configurations_stop_start_up(section, words):
    with pytest.raises(ConfigError) as caught:
        _build(section)
    assert words in str(caught.value)
    assert SECRET not in str(caught.value)


def test_bad_key_files_stop_start_up(tmp_path):
    (tmp_path / "bad.pem").write_text("not a key")
    (tmp_path / "bad.json").write_text('{"keys": []}')
    with pytest.raises(ConfigError, match="not a PEM public key"):
        _build({"publicKey": str(tmp_path / "bad.pem")})
    with pytest.raises(ConfigError, match="not a JSON Web Key Set"):
        _build({"jwks": str(tmp_path / "bad.json")})


def test_the_secret_may_come_from_the_environment(tmp_path):
    settings = _build({"audience": "dpmq"}, {"DPMQ_AUTH_JWT_SECRET": "1234" * 10,
                                             "DPMQ_AUTH_JWT_LEEWAY": "2"}, tmp_path)
    jwt_settings = settings.auth.jwt
    assert jwt_settings.secret == "1234" * 10 and jwt_settings.leeway == 2.0
    assert jwt_settings.algorithms == ("HS256",) and jwt_settings.audience == "dpmq"
    assert settings.as_dict()["auth"]["jwt"]["secret"] == "***"
    assert settings.replace(log={"level": "DEBUG"}).auth.jwt == jwt_settings
    with pytest.raises(ConfigError, match="DPMQ_AUTH_JWT_SECRET"):
        _build({}, {"DPMQ_AUTH_JWT_SECRTE": "x"}, tmp_path)


# -- the expiry timer, on a fake clock -------------------------------------------------------
def test_the_expiry_timer_runs_what_is_due_once_and_forgets_the_rest():
    from dpmq.token_expiry import Expiry
    clock = [1000.0]
    expiry = Expiry(now=lambda: clock[0])
    ran = []
    expiry.watch("a", 1001.0, lambda: ran.append("a"))
    expiry.watch("b", 1002.0, lambda: ran.append("b"))
    expiry.watch("c", 1001.5, lambda: ran.append("c"))
    expiry.watch("b", 1003.0, lambda: ran.append("b2"))    # refreshed: the later deadline counts
    expiry.forget("c")                                      # left before its token expired
    assert expiry.deadline("b") == 1003.0 and len(expiry) == 2
    clock[0] = 1002.5
    with expiry._cond:
        expiry._cond.notify()
    wait_for(lambda: ran == ["a"], timeout=5, what="a's action")
    clock[0] = 1003.0
    with expiry._cond:
        expiry._cond.notify()
    wait_for(lambda: not len(expiry), timeout=5, what="b's action")
    wait_for(lambda: expiry._thread is None, timeout=5, what="the timer thread to end")
    assert ran == ["a", "b2"]


# -- claims that must not fail open ----------------------------------------------------------
@pytest.mark.parametrize("value", ["", {}, 0, False, None, "orders.*", ["orders.*", 1]])
def test_pattern_claims_that_are_not_lists_of_strings_are_refused(locked, value):
    for field in ("topics", "consumers"):
        token = mint(role=None, dpmq={"role": "producer", field: value})
        msg = _refused(_send(locked, token), 403, f"dpmq.{field}", "list of strings")
        assert token not in msg
    assert locked.broker.engine.heads() == {}


def test_an_empty_topics_list_grants_no_topic(locked):
    token = mint(role=None, dpmq={"role": "producer", "topics": []})
    _refused(_send(locked, token), 403, "topic not allowed", "empty")
    batch = locked.http.post(locked.url + "/ProducerSendBatch", headers=bearer(token),
                             json={"topic": "orders.eu", "messages": ["a"]})
    _refused(batch, 403, "topic not allowed")
    consumer = mint(role=None, dpmq={"role": "consumer", "topics": []})
    code, reason = connect_and_close_code(locked.ws_url,
                                          f"/ConsumersConn/orders.eu/c?token={consumer}")
    assert code == 4403 and "topic not allowed" in reason
    everything = mint(role=None, dpmq={"role": "producer"})          # left out: every topic
    assert _send(locked, everything, topic="anything").json()["code"] == 0
    assert locked.broker.engine.heads() == {"anything": 1}


# -- a token's lifetime ------------------------------------------------------------------------
def test_a_token_that_lives_longer_than_max_lifetime_is_refused(locked, make_broker):
    day = 86400
    assert _send(locked, mint(ttl=day - 60)).json()["code"] == 0
    for token in (mint(ttl=2 * day),                                       # exp is too far away
                  mint(ttl=3600, iat=int(time.time()) - day)):            # minted too long ago
        msg = _refused(_send(locked, token), 401, "auth.jwt.maxLifetime", "lives too long")
        assert token not in msg
    uncapped = make_broker("memory", auth={"enabled": True, "jwt": dict(JWT, maxLifetime=0)})
    assert _send(uncapped, mint(ttl=10 * 365 * day)).json()["code"] == 0
    short = make_broker("memory", auth={"enabled": True, "jwt": dict(JWT, maxLifetime=600)})
    _refused(_send(short, mint(ttl=3600)), 401, "auth.jwt.maxLifetime (600s)")


def test_max_lifetime_is_configured_with_the_jwt_section(tmp_path):
    assert _build({"secret": SECRET}).auth.jwt.maxLifetime == 86400
    assert _build({"secret": SECRET}, {"DPMQ_AUTH_JWT_MAXLIFETIME": "3600"},
                  tmp_path).auth.jwt.maxLifetime == 3600
    with pytest.raises(ConfigError, match="auth.jwt.maxLifetime must be between"):
        _build({"secret": SECRET, "maxLifetime": -1})


# -- refreshing a token on an open connection ------------------------------------------------
def test_a_fresh_token_must_still_grant_someone_elses_subscription(locked):
    alice = Collector(locked.ws_url, "orders.eu", "shared-1", f"?token={mint(role='consumer')}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="alice's consumer")
    alice.close()
    wait_for(lambda: not locked.broker.members(), what="alice's consumer to leave")
    granted = mint(role=None, sub="bob", dpmq={"role": "consumer", "consumers": ["shared-*"]})
    bob = Collector(locked.ws_url, "orders.eu", "shared-1", f"?token={granted}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="bob on alice's subscription")
    bob.send(json.dumps({"token": granted}))        # still granted: stays
    bob.send(json.dumps({"token": mint(role="consumer", sub="bob")}))      # the grant is gone
    wait_for(lambda: bob.closed is not None, timeout=5, what="the close")
    assert bob.closed[0] == 4403 and "belongs to someone else" in bob.closed[1], bob.closed


def test_a_token_frame_for_a_closing_consumer_is_ignored(locked):
    from dpmq.views import consumer as view
    Collector(locked.ws_url, "orders.eu", "c", f"?token={mint(role='consumer', ttl=30)}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="the consumer")
    (member,) = locked.broker.members()
    auth = locked.app.extensions["dpmq_auth"]
    assert auth.expiry.deadline(member) is not None
    locked.broker.close_member(member, 1000, "closed by the test")
    wait_for(lambda: auth.expiry.deadline(member) is None, what="its expiry to be forgotten")
    view._refresh(locked.broker, auth, member, {"token": mint(role="consumer", ttl=60)})
    assert auth.expiry.deadline(member) is None, "a consumer that left is watched again"


# -- the expiry timer stops with the broker --------------------------------------------------
def test_stop_ends_the_expiry_timer_at_once_whatever_is_due():
    from dpmq.token_expiry import Expiry
    expiry = Expiry(now=lambda: 1000.0)
    ran = []
    expiry.watch("a", 5000.0, lambda: ran.append("a"))
    thread = expiry._thread
    started = time.monotonic()
    expiry.stop()
    assert not thread.is_alive() and time.monotonic() - started < 1
    expiry.watch("b", 1000.0, lambda: ran.append("b"))      # stopped: watches nothing more
    assert expiry._thread is None and not len(expiry) and ran == []


def test_no_expiry_thread_outlives_the_broker(locked):
    consumer = Collector(locked.ws_url, "orders.eu", "c", f"?token={mint(role='consumer')}")
    wait_for(lambda: len(locked.broker.members()) == 1, what="the consumer")
    # a deadline no consumer's leaving forgets (as one watched again by a late token frame)
    locked.app.extensions["dpmq_auth"].expiry.watch("left over", time.time() + 3600, lambda: None)
    assert _expiry_threads()
    locked.broker.stop(timeout=5)
    assert not _expiry_threads()
    consumer.close()


def _expiry_threads():
    return [t for t in threading.enumerate() if t.name == "dpmq-token-expiry" and t.is_alive()]

"""One structured line per significant event, never a secret."""

import logging

from helpers import Collector, wait_for


def test_start_consumers_and_dead_letters_are_logged_without_secrets(make_broker, caplog):
    caplog.set_level(logging.INFO, logger="dpmq")
    running = make_broker("memory", mq={"ackTimeout": 0.1, "sendRetryCount": 0},
                          auth={"enabled": True, "tokens": [{"token": "very-secret-1", "role": "admin"}]})
    consumer = Collector(running.ws_url, "t", "c1", "?ack=1&token=very-secret-1")
    wait_for(lambda: running.broker.members(), what="the consumer")
    running.publish_many("t", ["x"])
    wait_for(lambda: any("dead letter" in r.getMessage() for r in caplog.records), what="a dead letter")
    consumer.close()
    wait_for(lambda: not running.broker.members(), what="the consumer to leave")
    # DPMQ's own lines; the test server's access log shows the ?token= of the URL, which is why the
    # README recommends the Authorization header.
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("dpmq")]
    assert any(line.startswith("config source=") and '"enabled":true' in line for line in lines)
    assert any(line.startswith("broker started engine=memory") and "auth=on" in line for line in lines)
    assert any(line.startswith("consumer connected topic='t' id='c1'") for line in lines)
    assert any(line.startswith("consumer disconnected topic='t' id='c1' reason=") for line in lines)
    assert any(line.startswith("dead letter code=") for line in lines)
    assert not any("very-secret-1" in line for line in lines)

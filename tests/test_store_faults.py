"""Store faults: a full store refuses with 503 and keeps what it accepted; it recovers on its own."""

from helpers import Collector, wait_for


def _limit_pages(running, pages):
    """Make the SQLite file unable to grow, as a full disk would (SQLITE_FULL on commit)."""
    running.broker.engine._writer.execute(f"pragma max_page_count = {pages}")


def test_a_full_store_answers_503_keeps_what_it_had_and_recovers(make_broker):
    running = make_broker("sqlite", mq={"publishTimeout": 0.5})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    kept = running.publish_many("t", ["before the disk filled"])
    consumer.wait_count(1)
    pages = running.broker.engine._writer.execute("pragma page_count").fetchone()[0]
    _limit_pages(running, pages)
    refused = None
    for n in range(200):
        reply = running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": "y" * 4000 + str(n)})
        if reply.status_code != 200:
            refused = reply
            break
    assert refused is not None, "a full store must refuse"
    assert refused.status_code == 503 and refused.json()["code"] == -1
    assert "disk space" in refused.json()["msg"] and refused.headers["Retry-After"]
    assert running.broker.engine.read("t", 0, 1)[0].code == kept[0]

    _limit_pages(running, 1_000_000_000)          # space again
    reply = running.publish("t", "after recovery")
    assert reply["code"] == 0
    wait_for(lambda: "after recovery" in consumer.datas, what="delivery after recovery")
    assert running.http.get(running.url + "/readyz").status_code == 200
    assert consumer.datas.count("before the disk filled") == 1

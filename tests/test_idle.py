"""An idle broker sleeps: with nothing published and no cursor moving, the housekeeping thread
dozes until its next sweep instead of turning every half second, and the first message wakes it
(its consumers' cursors are saved as promptly as before)."""

from helpers import Collector, wait_for


def test_the_sweeper_dozes_when_idle_and_the_next_message_wakes_it(make_broker):
    running = make_broker("sqlite", mq={"cursorFlushInterval": 0.05, "sweepInterval": 3600},
                          server={"pingInterval": 0})
    housekeeping, engine = running.broker.housekeeping, running.broker.engine
    consumer = Collector(running.ws_url, "quiet", "c")
    wait_for(lambda: running.broker.members(), what="the join")
    wait_for(lambda: housekeeping.dozing, timeout=5, what="the sweeper dozing")
    for n in range(3):
        running.publish("quiet", f"m{n}")
        consumer.wait_count(n + 1)
        head = running.broker.heads["quiet"]
        # a doze lasts till the next sweep, an hour away: the message ended it
        wait_for(lambda head=head: engine.cursor("quiet", "c:c") == head, timeout=2,
                 what="the consumer's cursor saved after the doze")
        wait_for(lambda: housekeeping.dozing, timeout=5, what="the sweeper dozing again")
    assert consumer.datas == ["m0", "m1", "m2"]
    consumer.close()

"""The web console in a real browser: it loads, shows what was published, requeues dead letters,
and asks for the admin token when auth is on."""

import re

from helpers import Collector, wait_for


def test_console_shows_a_new_message_and_requeues_a_dead_letter(make_broker, browser):
    running = make_broker("sqlite", mq={"ackTimeout": 0.2, "sendRetryCount": 0})
    lazy = Collector(running.ws_url, "orders", "lazy", "?ack=1")
    wait_for(lambda: running.broker.members(), what="the consumer")
    page = browser.new_page(bypass_csp=True)     # Playwright polls with eval; the CSP forbids it
    page.goto(running.url + "/")
    assert page.url.endswith("/Console/")
    page.wait_for_selector("#consumers-body td:has-text('lazy')")

    (code,) = running.publish_many("orders", ["<i>an order</i>"])
    lazy.wait_count(1)
    page.fill("#search-topic", "orders")
    page.click("#search button[type=submit]")
    row = page.wait_for_selector(f"#messages-body tr:has-text('{code}')")
    assert "<i>an order</i>" in row.inner_text()          # shown as text, never as markup

    wait_for(lambda: running.get("/Console/GetDeadLetters")["data"], what="the dead letter")
    button = page.wait_for_selector(f"#dead-body tr:has-text('{code}') button", timeout=10000)
    page.wait_for_function("document.querySelector('.tile[data-label=\"Dead letters\"] .value')"
                           ".textContent === '1'", timeout=10000)
    button.click()
    wait_for(lambda: running.get("/Console/GetDeadLetters")["data"] == [], what="the requeue")
    lazy.wait_count(2)
    assert lazy.messages[1]["MessageCode"] == code
    page.wait_for_selector("#topics-body td:has-text('orders')")


def test_console_asks_for_the_admin_token(make_broker, browser):
    running = make_broker("memory", auth={"enabled": True, "tokens": [
        {"token": "admin-secret", "role": "admin"}, {"token": "consumer-secret", "role": "consumer"}]})
    page = browser.new_page(bypass_csp=True)     # Playwright polls with eval; the CSP forbids it
    page.goto(running.url + "/Console/")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", "consumer-secret")
    page.click("#login-form button")
    page.wait_for_function("document.getElementById('login-error').textContent.includes('not an admin')")
    page.fill("#token", "admin-secret")
    page.click("#login-form button")
    page.wait_for_selector("#app:not([hidden])")
    page.wait_for_selector("#config-body:has-text('\"tokens\"')")
    assert "admin-secret" not in page.inner_text("#config-body")


def test_the_rate_charts_have_a_legend_and_axes(make_broker, browser):
    running = make_broker("memory")
    page = browser.new_page(bypass_csp=True)     # Playwright polls with eval; the CSP forbids it
    page.goto(running.url + "/Console/")
    running.publish_many("t", ["x"] * 50)
    # Two samples of the history (one a second) make a line and a time axis.
    page.wait_for_function("document.querySelectorAll('#rates .x-axis text.tick').length >= 3",
                           timeout=15000)
    legend = page.inner_text("#rates-chart .legend")
    assert "Published" in legend and "Delivered" in legend and legend.count("per second") == 2
    assert page.text_content("#rates .y-axis .axis-title") == "messages/s"
    assert "time" in page.text_content("#rates .x-axis .axis-title")
    ticks = page.eval_on_selector_all("#rates .x-axis text.tick", "nodes => nodes.map(n => n.textContent)")
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", tick) for tick in ticks), ticks
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    values = page.eval_on_selector_all("#rates .y-axis text.tick", "nodes => nodes.map(n => n.textContent)")
    assert values[0] == "0" and float(values[-1]) > 0
    lines = page.query_selector_all("#rates polyline")
    assert len(lines) == len(page.query_selector_all("#rates-chart .legend li")) == 2
    assert "messages" in page.text_content("#buffer .y-axis .axis-title")
    page.wait_for_function("document.getElementById('buffer-capacity').textContent === '100'")
    legend = page.inner_text("#buffer-chart .legend")
    assert "not yet handed out" in legend and "mq.messageChanBuffer" in legend
    tile = page.wait_for_selector(".tile[data-label='Awaiting paced push']")
    assert "Always 0 unpaced" in tile.get_attribute("title")


def test_the_failed_tile_says_what_it_counts(make_broker, browser):
    running = make_broker("memory")
    page = browser.new_page(bypass_csp=True)
    page.goto(running.url + "/Console/")
    tile = page.wait_for_selector(".tile[data-label='Failed deliveries']")
    assert "ack timeouts" in tile.get_attribute("title")
    assert page.query_selector(".tile[data-label='Failed pushes']") is None


def test_the_console_names_the_process_that_answered_and_that_holds_each_consumer(make_broker, browser):
    running = make_broker("memory")
    Collector(running.ws_url, "t", "watched")
    wait_for(lambda: running.broker.members(), what="the consumer")
    process = running.get("/Console/Ping")["data"]["process"]
    page = browser.new_page(bypass_csp=True)
    page.goto(running.url + "/Console/")
    row = page.wait_for_selector("#consumers-body tr:has-text('watched')")
    assert row.inner_text().split("\t")[-1] == process
    page.wait_for_function(f"document.getElementById('meta').textContent.includes('answered by {process}')")
    assert "1 process" in page.inner_text("#meta") and page.is_hidden("#missing")


def test_the_console_shows_each_consumers_transport_and_its_expired_and_gaps(make_broker, browser):
    from dpmq.client import Consumer
    running = make_broker("memory")
    Collector(running.ws_url, "t", "socket")
    streamed = Consumer(running.url, "t", "streamed", transport="sse")
    streamed.receive(timeout=0.01)                  # connects
    wait_for(lambda: len(running.broker.members()) == 2, what="the two consumers")
    page = browser.new_page(bypass_csp=True)
    page.goto(running.url + "/Console/")
    headings = page.eval_on_selector_all("#consumers th", "nodes => nodes.map(n => n.textContent)")
    assert {"Transport", "Expired", "Gaps"} <= set(headings) and headings[-1] == "Process"
    cells = dict(zip(headings, page.wait_for_selector("#consumers-body tr:has-text('streamed')")
                     .inner_text().split("\t")))
    assert (cells["Transport"], cells["Expired"], cells["Gaps"]) == ("sse", "0", "0")
    row = page.wait_for_selector("#consumers-body tr:has-text('socket')")
    assert dict(zip(headings, row.inner_text().split("\t")))["Transport"] == "websocket"
    running.publish("t", "x")
    topic = page.wait_for_selector("#topics-body tr:has-text('t')")
    topic_headings = page.eval_on_selector_all("#topics th", "nodes => nodes.map(n => n.textContent)")
    cells = dict(zip(topic_headings, topic.inner_text().split("\t")))
    assert (cells["Expired"], cells["Gaps"]) == ("0", "0")
    assert "undefined" not in page.inner_text("#app")
    streamed.close()


def test_the_console_shows_each_webhooks_backlog_and_last_error(make_broker, browser):
    from helpers import free_port
    url = f"http://127.0.0.1:{free_port()}/hook/s3cr3t"         # nothing listens there
    running = make_broker("sqlite", events={"webhooks": [{"url": url, "secret": "s" * 16}]})
    for name in ("a", "b"):
        Collector(running.ws_url, "t", name)
    wait_for(lambda: len(running.broker.members()) == 2, what="the consumers")
    wait_for(lambda: running.get("/Console/GetWebhooks")["data"][0]["backlog"] == 2,
             what="two events waiting for the webhook")
    wait_for(lambda: running.get("/Console/GetWebhooks")["data"][0]["lastError"],
             what="a failed try")
    page = browser.new_page(bypass_csp=True)
    page.goto(running.url + "/Console/")
    row = page.wait_for_selector("#webhooks-body tr:has-text('127.0.0.1')")
    headings = page.eval_on_selector_all("#webhooks th", "nodes => nodes.map(n => n.textContent)")
    cells = dict(zip(headings, row.inner_text().split("\t")))
    assert cells["Backlog"] == "2" and cells["Delivered"] == "0" and cells["Types"] == "all"
    assert "refused" in cells["Last error"].lower()
    assert "s3cr3t" not in page.inner_text("#app")

    quiet = make_broker("memory")
    page.goto(quiet.url + "/Console/")
    page.wait_for_selector("#app:not([hidden])")
    page.wait_for_selector("#consumers-body tr")           # refreshed once
    assert page.is_hidden("#webhooks"), "no panel without webhooks"

"""The examples run as written: the browser consumer in headless Chromium, the Python ones as is."""

import importlib.util
import pathlib
import subprocess
import sys

from dpmq.client import Consumer

from helpers import wait_for

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_browser_example_receives_messages_and_resumes_after_a_drop(make_broker, browser):
    running = make_broker("sqlite")
    page = browser.new_page()
    page.goto((EXAMPLES / "browser-consumer.html").as_uri() +
              f"?broker={running.ws_url}&topic=news&id=page-1")
    page.wait_for_function("document.getElementById('status').textContent === 'connected'")
    codes = running.publish_many("news", ["first", "second"])
    page.wait_for_function("document.querySelectorAll('#messages li').length === 2")
    (member,) = running.broker.members()
    running.broker.close_member(member, 1001, "going away for a moment")
    wait_for(lambda: not running.broker.members(), what="the page to be disconnected")
    codes += running.publish_many("news", ["while away"])
    page.wait_for_function("document.querySelectorAll('#messages li').length === 3",
                           timeout=15000)
    shown = page.eval_on_selector_all("#messages li", "items => items.map(i => i.dataset.code)")
    assert shown == codes
    assert "while away" in page.inner_text("#messages")


def test_worker_pool_example_does_each_job_once(broker):
    logged = ("import logging, runpy, sys; logging.basicConfig(level=logging.INFO);"
              " sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    pool = subprocess.Popen([sys.executable, "-c", logged, str(EXAMPLES / "worker_pool.py"), "--url",
                             broker.url, "--topic", "jobs", "--workers", "3", "--jobs", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(broker.broker.members()) == 3, what="three workers")
    broker.publish_many("jobs", [f"job {i}" for i in range(30)])
    out, err = pool.communicate(timeout=30)
    assert pool.returncode == 0, err
    done = sorted(line.split(": ", 1)[1] for line in out.splitlines())
    assert done == sorted(f"job {i} (attempt 1)" for i in range(30)), err
    assert len({line.split(":")[0] for line in out.splitlines()}) > 1, "the work should be shared"


def test_flask_producer_example_publishes(broker, monkeypatch):
    monkeypatch.setenv("DPMQ_URL", broker.url)
    spec = importlib.util.spec_from_file_location("flask_producer", EXAMPLES / "flask_producer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    consumer = Consumer(broker.url, "orders", "shipping")
    consumer.receive(timeout=0.01)      # connects; it takes what is published once it has joined
    wait_for(lambda: broker.broker.members(), what="the consumer to join")
    client = module.app.test_client()
    reply = client.post("/orders", data={"item": "book"})
    assert reply.status_code == 202
    message = consumer.receive(timeout=5)
    assert message.data == "book" and message.code == reply.get_json()["queued"]
    assert client.post("/orders", data={}).status_code == 400
    consumer.close()
    module.producer.close()

"""A Flask app that publishes to DPMQ: every order placed is a message on the "orders" topic.

    pip install dpmq    # Flask comes with it
    DPMQ_URL=http://127.0.0.1:8080 flask --app examples/flask_producer.py run --port 5000
    curl -d item=book http://127.0.0.1:5000/orders
"""

import os

from flask import Flask, jsonify, request

from dpmq.client import ClientError, ConnectionFailed, Producer

app = Flask(__name__)
# One Producer for the whole app: it is thread-safe and keeps its connection alive.
producer = Producer(os.environ.get("DPMQ_URL", "http://127.0.0.1:8080"))


@app.post("/orders")
def place_order():
    item = request.form.get("item") or (request.get_json(silent=True) or {}).get("item")
    if not item:
        return jsonify(error="item is required"), 400
    try:
        code = producer.send("orders", item, key=request.form.get("customer"))
    except ClientError as exc:          # the broker refused it: tell the caller why
        return jsonify(error=str(exc)), 502
    except ConnectionFailed:
        return jsonify(error="the message queue is unreachable; try again"), 503
    return jsonify(queued=code), 202


if __name__ == "__main__":
    app.run(port=5000)

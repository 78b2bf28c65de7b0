"""The comparison peer: the same job done the way a Flask team would without DPMQ.

Flask-SocketIO 5 in threading mode (simple-websocket underneath), under gunicorn gthread.
``POST /ProducerSend`` (form fields topic, messageData) emits the same five-field object to the
room of the topic; Socket.IO clients join a room by emitting ``join`` with the topic. No
persistence, no pacing, no retry: the baseline DPMQ's figures are compared with.

    pip install flask-socketio gunicorn     # not DPMQ dependencies
    cd bench && gunicorn -k gthread --threads 2200 -w 1 -b 127.0.0.1:9001 socketio_peer:app
    dpmq bench --url http://127.0.0.1:9001 --protocol socketio --scenario fanout
"""

import hashlib
import os
import time

from flask import Flask, jsonify, request
from flask_socketio import SocketIO, join_room

app = Flask(__name__)
socketio = SocketIO(app, async_mode="threading", cors_allowed_origins="*")


@app.post("/ProducerSend")
def producer_send():
    topic, data = request.form.get("topic"), request.form.get("messageData")
    if not topic or data is None:
        return jsonify(code=-1, msg="topic and messageData are required"), 400
    code = hashlib.sha1(os.urandom(20)).hexdigest()
    socketio.emit("message", {"MessageCode": code, "MessageData": data, "Topic": topic,
                              "CreateTime": time.strftime("%Y-%m-%d %H:%M:%S"), "Status": 0},
                  to=topic)
    return jsonify(code=0, msg=code)


@app.get("/healthz")
def healthz():
    return jsonify(code=0, msg="ok")


@socketio.on("join")
def join(topic):
    join_room(topic)
    return "joined"

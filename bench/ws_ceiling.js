// The machine's ceiling: a minimal Node server doing DPMQ's job with the `ws` library.
// POST /ProducerSend (form: topic, messageData) pushes the five-field object to every WebSocket
// connected at /ConsumersConn/<topic>/<id>. No pacing, no retry: just the wire.
//
// With a folder after the port it is also durable the way DPMQ's default engine is: a publish is
// replied to, and its frame sent, only once a flush of the disk that began after the frame was
// written has finished. It is the cheapest durable log we know how to make, so that it stands
// for the best a durable server does on this disk: one file written in place over zeros flushed at
// start (a flush that grows a file also writes the file system's journal), and a flush started
// for each frame as soon as it is written, several at once on libuv's threads; a flush that ends
// makes every frame written before it durable, and frames go out in the order they were written.
// (One flush at a time, shared by the frames written while the previous one ran, was 8 % slower
// in fan-out here.)
//
//   (cd bench && npm install ws@8) && node bench/ws_ceiling.js 9002 [/tmp/ceiling]
//   dpmq bench --url http://127.0.0.1:9002 --scenario fanout
const http = require("http");
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const { WebSocketServer } = require("ws");

const LOG_BYTES = 64 * 1024 * 1024;
const topics = new Map();

function durableLog(folder) {
  fs.mkdirSync(folder, { recursive: true });
  const fd = fs.openSync(path.join(folder, "ceiling.log"), "w+");
  const zeros = Buffer.alloc(1024 * 1024);
  for (let at = 0; at < LOG_BYTES; at += zeros.length) fs.writeSync(fd, zeros, 0, zeros.length, at);
  fs.fdatasyncSync(fd);
  let position = 0, written = 0, durable = 0;
  const pending = [];
  return (frame, done) => {
    const bytes = Buffer.from(frame);
    if (position + bytes.length > LOG_BYTES) position = 0;
    fs.writeSync(fd, bytes, 0, bytes.length, position);
    position += bytes.length;
    const seq = ++written;
    pending.push([seq, done]);
    fs.fdatasync(fd, (err) => {
      if (err) throw err;
      if (seq <= durable) return;
      durable = seq;
      while (pending.length && pending[0][0] <= durable) pending.shift()[1]();
    });
  };
}

const store = process.argv[3] ? durableLog(process.argv[3]) : (frame, done) => done();

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/healthz") { res.end('{"code":0,"msg":"ok"}'); return; }
  if (req.method !== "POST" || req.url !== "/ProducerSend") { res.statusCode = 404; res.end(); return; }
  let body = "";
  req.on("data", (chunk) => { body += chunk; });
  req.on("end", () => {
    const form = new URLSearchParams(body);
    const topic = form.get("topic"), data = form.get("messageData");
    const code = crypto.randomBytes(20).toString("hex");
    const frame = JSON.stringify({ MessageCode: code, MessageData: data, Topic: topic,
      CreateTime: new Date().toISOString().slice(0, 19).replace("T", " "), Status: 0 });
    store(frame, () => {
      for (const ws of topics.get(topic) || []) ws.send(frame);
      res.setHeader("Content-Type", "application/json");
      res.end(JSON.stringify({ code: 0, msg: code }));
    });
  });
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on("connection", (ws, req) => {
  const topic = decodeURIComponent(req.url.split("/")[2]);
  if (!topics.has(topic)) topics.set(topic, new Set());
  topics.get(topic).add(ws);
  ws.on("close", () => topics.get(topic).delete(ws));
});
server.listen(Number(process.argv[2] || 9002), "127.0.0.1");

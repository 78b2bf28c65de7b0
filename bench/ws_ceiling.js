// The machine's ceiling: a minimal Node server doing DPMQ's job with the `ws` library.
// POST /ProducerSend (form: topic, messageData) pushes the five-field object to every WebSocket
// connected at /ConsumersConn/<topic>/<id>. No persistence, no pacing: just the wire.
//
//   (cd bench && npm install ws@8) && node bench/ws_ceiling.js 9002
//   dpmq bench --url http://127.0.0.1:9002 --scenario fanout
const http = require("http");
const crypto = require("crypto");
const { WebSocketServer } = require("ws");

const topics = new Map();
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
    for (const ws of topics.get(topic) || []) ws.send(frame);
    res.setHeader("Content-Type", "application/json");
    res.end(JSON.stringify({ code: 0, msg: code }));
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

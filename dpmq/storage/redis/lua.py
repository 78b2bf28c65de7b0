"""The Lua scripts of the ``redis`` engine: every write that must be atomic runs as one script.

Redis runs a script alone, so offsets, idempotency keys, group claims and cursors never race between
DPMQ processes. Keys are built inside the scripts from the prefix (``ARGV[1]``, which carries the
``{…}`` hash tag, so that all of one broker's keys hash to one Cluster slot). Layout, for prefix P:

- ``P:heads`` hash topic -> newest offset; ``P:log:<topic>`` stream, entry id ``<offset>-0``,
  fields c (code) d (data) t (created) k (key) x (expires, when it has a ttl) p (traceparent,
  when given) n (node that wrote it); ``P:codes:<topic>`` hash
  code -> offset; ``P:idem:<topic>`` hash idempotency key -> code, ``P:idemt`` zset of them by time;
- ``P:delayed`` zset code -> due, ``P:delayedmsg`` hash code -> JSON message (the APPEND row);
- ``P:cursors`` hash "topic|sub" -> cursor, ``P:cursorst`` zset of them by last update;
  ``P:forgotten`` hash "topic|sub" -> the cursor retention forgot for idleness, ``P:forgottent``
  zset of them by when, kept one more retention period;
  ``P:att:<topic>|<sub>`` hash offset -> failed attempts;
- ``P:dead`` zset "topic|sub|offset" -> dead_at, ``P:deadmsg`` hash of the same -> JSON;
  ``P:rq:<topic>|<sub>`` zset of requeued records (JSON) by offset;
- groups shared by processes: ``P:gnext`` hash "topic|sub" -> next offset to hand out,
  ``P:gpend:<topic>|<sub>`` zset of offsets handed out and not done, ``P:gown:<topic>|<sub>`` hash
  offset -> the node holding it, ``P:gretry:<topic>|<sub>`` zset of offsets to hand out again;
- ``P:nodes`` zset node -> when its heartbeat expires (ms); ``P:owners`` hash "topic|consumerId"
  -> node, so that one consumerId is connected to one process at a time;
- ``P:subowner`` hash "topic|sub" -> JSON [owner or '', durable 0|1]: who a subscription belongs
  to; ``P:subownert`` zset of the same by when it was recorded, until retention looks at it;
- channel ``P:commits`` carries "topic|head|how many were added|node" after each append;
  ``P:events`` carries requeues.
"""

COMMON = r"""
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function add(node, topic, code, data, created, key, expires, trace, heads, added)
  local off = redis.call('HINCRBY', P .. ':heads', topic, 1)
  local args = {P .. ':log:' .. topic, off .. '-0', 'c', code, 'd', data, 't', created, 'n', node}
  if key then
    args[#args + 1] = 'k'
    args[#args + 1] = key
  end
  if expires and tonumber(expires) > 0 then
    args[#args + 1] = 'x'
    args[#args + 1] = expires
  end
  if trace then
    args[#args + 1] = 'p'
    args[#args + 1] = trace
  end
  redis.call('XADD', unpack(args))
  redis.call('HSET', P .. ':codes:' .. topic, code, off)
  heads[topic] = off
  added[topic] = (added[topic] or 0) + 1
  return off
end
local function announce(heads, added, node)
  for topic, head in pairs(heads) do
    redis.call('PUBLISH', P .. ':commits', topic .. '|' .. head .. '|' .. added[topic] .. '|' .. node)
  end
end
"""

# ARGV: P, node, now, JSON [[code, topic, data, created, key|false, idempotency key|false, due,
# expires, traceparent|false]…] (a delayed message stored by an earlier version may lack the last
# two),
# batch id. Returns per message "o<offset>" (stored), "c<code>" (an earlier code) or "d" (delayed);
# nothing if the batch was cancelled (see CANCEL).
APPEND = COMMON + r"""
local node, now = ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', P .. ':cancelled:' .. ARGV[5]) == 1 then return {} end
local out, seen, heads, added = {}, {}, {}, {}
for i, m in ipairs(cjson.decode(ARGV[4])) do
  local code, topic, ikey, due = m[1], m[2], m[6], tonumber(m[7])
  local earlier = false
  if ikey then
    earlier = seen[topic .. '|' .. ikey] or redis.call('HGET', P .. ':idem:' .. topic, ikey)
    if not earlier then
      seen[topic .. '|' .. ikey] = code
      redis.call('HSET', P .. ':idem:' .. topic, ikey, code)
      redis.call('ZADD', P .. ':idemt', m[4], topic .. '|' .. ikey)
    end
  end
  if earlier then
    out[i] = 'c' .. earlier
  elseif due > now then
    redis.call('ZADD', P .. ':delayed', m[7], code)
    redis.call('HSET', P .. ':delayedmsg', code, cjson.encode(m))
    out[i] = 'd'
  else
    out[i] = 'o' .. add(node, topic, code, m[3], m[4], m[5], m[8], m[9], heads, added)
  end
end
announce(heads, added, node)
return out
"""

# ARGV: P, batch id, then triples of topic, code, idempotency key or '': the messages of an append
# whose reply was lost. If the append ran, returns what it returned; if not, makes sure it never
# will (it may still be on its way to Redis) and returns nothing.
CANCEL = r"""
local P = ARGV[1]
local out, ran = {}, false
for i = 3, #ARGV, 3 do
  local topic, code, ikey = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local off = redis.call('HGET', P .. ':codes:' .. topic, code)
  local earlier = ikey ~= '' and redis.call('HGET', P .. ':idem:' .. topic, ikey)
  if off then
    out[#out + 1], ran = 'o' .. off, true
  elseif redis.call('HEXISTS', P .. ':delayedmsg', code) == 1 then
    out[#out + 1], ran = 'd', true
  elseif earlier then
    out[#out + 1] = 'c' .. earlier
  else
    out[#out + 1] = 'd'
  end
end
if ran then return out end
redis.call('SET', P .. ':cancelled:' .. ARGV[2], 1, 'EX', 3600)
return {}
"""

# ARGV: P, node, now, limit. Returns JSON [[offset, code, topic, data, created, key|false, due,
# expires, traceparent|false]…].
PROMOTE = COMMON + r"""
local node = ARGV[2]
local due = redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', ARGV[3], 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[4]))
local out, heads, added = {}, {}, {}
for i = 1, #due, 2 do
  local code = due[i]
  local raw = redis.call('HGET', P .. ':delayedmsg', code)
  redis.call('ZREM', P .. ':delayed', code)
  redis.call('HDEL', P .. ':delayedmsg', code)
  if raw then
    local m = cjson.decode(raw)
    local off = add(node, m[2], code, m[3], m[4], m[5], m[8], m[9], heads, added)
    out[#out + 1] = {off, code, m[2], m[3], m[4], m[5], due[i + 1], m[8] or '0', m[9] or false}
  end
end
announce(heads, added, node)
return cjson.encode(out)
"""

# ARGV: P, now, then pairs of "topic|sub", cursor. A cursor only moves forward; a subscription
# that gets one anew is no longer forgotten.
SAVE_CURSORS = r"""
local P = ARGV[1]
for i = 3, #ARGV, 2 do
  local old = redis.call('HGET', P .. ':cursors', ARGV[i])
  if not old then
    redis.call('HDEL', P .. ':forgotten', ARGV[i])
    redis.call('ZREM', P .. ':forgottent', ARGV[i])
  end
  if not old or tonumber(old) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', P .. ':cursors', ARGV[i], ARGV[i + 1])
  end
  redis.call('ZADD', P .. ':cursorst', ARGV[2], ARGV[i])
end
return 0
"""

# ARGV: P, topic, sub or '', code or ''. Moves matching dead letters to the requeued records of
# their subscriptions; returns the JSON of each moved dead letter.
REQUEUE = r"""
local P, topic, sub, code = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for _, member in ipairs(redis.call('ZRANGE', P .. ':dead', 0, -1)) do
  if string.sub(member, 1, #topic + 1) == topic .. '|' then
    local raw = redis.call('HGET', P .. ':deadmsg', member)
    local d = raw and cjson.decode(raw)
    if d and (sub == '' or d.sub == sub) and (code == '' or d.code == code) then
      redis.call('ZREM', P .. ':dead', member)
      redis.call('HDEL', P .. ':deadmsg', member)
      redis.call('ZADD', P .. ':rq:' .. topic .. '|' .. d.sub, d.offset, raw)
      out[#out + 1] = raw
    end
  end
end
return out
"""

# ARGV: P, "topic|sub", node, upto, limit, cursor (where a group never seen here starts).
# Hands this node up to ``limit`` messages of a shared group: requeued dead letters first, then
# offsets to retry, then new offsets up to ``upto``. Returns {requeued JSON records, offsets}.
CLAIM = COMMON + r"""
local sub, node, upto, limit = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local pend, own = P .. ':gpend:' .. sub, P .. ':gown:' .. sub
redis.call('SADD', P .. ':groups', sub)
local requeued, offsets = {}, {}
for _, raw in ipairs(redis.call('ZRANGE', P .. ':rq:' .. sub, 0, limit - 1)) do
  local off = cjson.decode(raw).offset
  if redis.call('HSETNX', own, 'r' .. off, node) == 1 then
    requeued[#requeued + 1] = raw
  end
end
limit = limit - #requeued
if limit > 0 then
  for _, off in ipairs(redis.call('ZRANGE', P .. ':gretry:' .. sub, 0, limit - 1)) do
    redis.call('ZREM', P .. ':gretry:' .. sub, off)
    redis.call('ZADD', pend, off, off)
    redis.call('HSET', own, off, node)
    offsets[#offsets + 1] = off
  end
  limit = limit - #offsets
end
local nxt = tonumber(redis.call('HGET', P .. ':gnext', sub) or (tonumber(ARGV[6]) + 1))
local last = math.min(upto, nxt + limit - 1)
for off = nxt, last do
  redis.call('ZADD', pend, off, off)
  redis.call('HSET', own, off, node)
  offsets[#offsets + 1] = off
end
if last >= nxt or not redis.call('HEXISTS', P .. ':gnext', sub) then
  redis.call('HSET', P .. ':gnext', sub, math.max(nxt, last + 1))
end
return {requeued, offsets}
"""

# ARGV: P, "topic|sub", mode ('done' or 'retry'), then offsets ('r<offset>' for requeued ones).
# Done: forget them (a requeued one leaves the requeued records). Retry: put them back for any
# node to claim. Then the group's cursor moves up to the lowest offset not done.
SETTLE = r"""
local P, sub, mode = ARGV[1], ARGV[2], ARGV[3]
local pend, own = P .. ':gpend:' .. sub, P .. ':gown:' .. sub
local topic = string.match(sub, '^[^|]*')
for i = 4, #ARGV do
  local item = ARGV[i]
  redis.call('HDEL', own, item)
  if string.sub(item, 1, 1) == 'r' then
    if mode == 'done' then
      local off = string.sub(item, 2)
      redis.call('ZREMRANGEBYSCORE', P .. ':rq:' .. sub, off, off)
    end
  elseif redis.call('ZREM', pend, item) == 1 and mode == 'retry' then
    redis.call('ZADD', P .. ':gretry:' .. sub, item, item)
  end
end
local low = tonumber(redis.call('HGET', P .. ':gnext', sub) or 1)
for _, key in ipairs({pend, P .. ':gretry:' .. sub}) do
  local first = redis.call('ZRANGE', key, 0, 0)
  if first[1] then low = math.min(low, tonumber(first[1])) end
end
local old = redis.call('HGET', P .. ':cursors', sub)
if not old then
  redis.call('HDEL', P .. ':forgotten', sub)
  redis.call('ZREM', P .. ':forgottent', sub)
end
if not old or tonumber(old) < low - 1 then
  redis.call('HSET', P .. ':cursors', sub, low - 1)
end
return low - 1
"""

# ARGV: P, node, ttl ms. Keeps this node alive; hands what nodes whose heartbeat expired held in
# shared groups back for redelivery (one more failed attempt each). Returns how many went back.
HEARTBEAT = COMMON + r"""
local node, now = ARGV[2], now_ms()
redis.call('ZADD', P .. ':nodes', now + tonumber(ARGV[3]), node)
local dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now)
if #dead == 0 then return 0 end
local gone = {}
for _, n in ipairs(dead) do gone[n] = true end
local released = 0
for _, sub in ipairs(redis.call('SMEMBERS', P .. ':groups')) do
  local own = P .. ':gown:' .. sub
  local held = redis.call('HGETALL', own)
  for i = 1, #held, 2 do
    local item, holder = held[i], held[i + 1]
    if gone[holder] then
      redis.call('HDEL', own, item)
      if string.sub(item, 1, 1) ~= 'r' and redis.call('ZREM', P .. ':gpend:' .. sub, item) == 1 then
        redis.call('ZADD', P .. ':gretry:' .. sub, item, item)
        redis.call('HINCRBY', P .. ':att:' .. sub, item, 1)
      end
      released = released + 1
    end
  end
end
local owners = redis.call('HGETALL', P .. ':owners')
for i = 1, #owners, 2 do
  if gone[owners[i + 1]] then redis.call('HDEL', P .. ':owners', owners[i]) end
end
redis.call('ZREMRANGEBYSCORE', P .. ':nodes', '-inf', now)
return released
"""

# ARGV: P, "topic|consumerId", node. Takes the consumerId for this node unless a live node has it.
LOCK = COMMON + r"""
local key, node = ARGV[2], ARGV[3]
local holder = redis.call('HGET', P .. ':owners', key)
if holder and holder ~= node then
  local expires = redis.call('ZSCORE', P .. ':nodes', holder)
  if expires and tonumber(expires) > now_ms() then return 0 end
end
redis.call('HSET', P .. ':owners', key, node)
return 1
"""

# ARGV: P, "topic|consumerId", node. Lets the consumerId go if this node holds it.
UNLOCK = r"""
local P = ARGV[1]
if redis.call('HGET', P .. ':owners', ARGV[2]) == ARGV[3] then
  redis.call('HDEL', P .. ':owners', ARGV[2])
end
return 0
"""

# ARGV: P, before, keep, limit, then topics. Deletes old messages (and their codes) from the
# front of each topic's log. Returns how many went.
PURGE = r"""
local P, before, keep, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local removed = 0
for i = 5, #ARGV do
  if removed >= limit then break end
  local topic = ARGV[i]
  local head = tonumber(redis.call('HGET', P .. ':heads', topic) or 0)
  local keep_from = 0
  if keep > 0 then keep_from = head - keep + 1 end
  local entries = redis.call('XRANGE', P .. ':log:' .. topic, '-', '+', 'COUNT', limit - removed)
  for _, entry in ipairs(entries) do
    local off = tonumber(string.match(entry[1], '^%d+'))
    local fields, created, code = entry[2], nil, nil
    for j = 1, #fields, 2 do
      if fields[j] == 't' then created = tonumber(fields[j + 1]) end
      if fields[j] == 'c' then code = fields[j + 1] end
    end
    if not (created < before or off < keep_from) then break end
    redis.call('XDEL', P .. ':log:' .. topic, entry[1])
    redis.call('HDEL', P .. ':codes:' .. topic, code)
    removed = removed + 1
  end
end
return removed
"""

# ARGV: P, before, now. Retention of subscriptions: forgets where subscriptions forgotten before
# ``before`` stood, then forgets the subscriptions idle since before ``before`` (cursor, attempts,
# ownership), remembering where each stood, as of ``now``.
PURGE_CURSORS = r"""
local P, before = ARGV[1], '(' .. ARGV[2]
for _, name in ipairs(redis.call('ZRANGEBYSCORE', P .. ':forgottent', '-inf', before)) do
  redis.call('HDEL', P .. ':forgotten', name)
end
redis.call('ZREMRANGEBYSCORE', P .. ':forgottent', '-inf', before)
for _, name in ipairs(redis.call('ZRANGEBYSCORE', P .. ':cursorst', '-inf', before)) do
  local cursor = redis.call('HGET', P .. ':cursors', name)
  if cursor then
    redis.call('HSET', P .. ':forgotten', name, cursor)
    redis.call('ZADD', P .. ':forgottent', ARGV[3], name)
  end
  redis.call('HDEL', P .. ':cursors', name)
  redis.call('DEL', P .. ':att:' .. name)
  redis.call('HDEL', P .. ':subowner', name)
end
redis.call('ZREMRANGEBYSCORE', P .. ':cursorst', '-inf', before)
return 0
"""

# ARGV: P, "topic|sub", owner or '', durable (1 or 0), now. Records the owner unless one is on
# record (an ownerless record takes it); a subscription with a cursor and no record is durable.
# Returns the JSON [owner or '', durable] on record.
OWN = r"""
local P, name, owner = ARGV[1], ARGV[2], ARGV[3]
local raw = redis.call('HGET', P .. ':subowner', name)
local rec
if raw then
  rec = cjson.decode(raw)
  if rec[1] ~= '' or owner == '' then return raw end
  rec[1] = owner
else
  local durable = tonumber(ARGV[4])
  if redis.call('HEXISTS', P .. ':cursors', name) == 1 then durable = 1 end
  rec = {owner, durable}
  redis.call('ZADD', P .. ':subownert', ARGV[5], name)
end
raw = cjson.encode(rec)
redis.call('HSET', P .. ':subowner', name, raw)
return raw
"""

# ARGV: P, "topic|sub". Deletes everything kept for the subscription: cursor, attempts, requeued
# and dead letters, group state, ownership, where it stood if retention forgot it.
FORGET = r"""
local P, name = ARGV[1], ARGV[2]
redis.call('HDEL', P .. ':cursors', name)
redis.call('ZREM', P .. ':cursorst', name)
redis.call('HDEL', P .. ':forgotten', name)
redis.call('ZREM', P .. ':forgottent', name)
redis.call('HDEL', P .. ':subowner', name)
redis.call('ZREM', P .. ':subownert', name)
redis.call('HDEL', P .. ':gnext', name)
redis.call('SREM', P .. ':groups', name)
redis.call('DEL', P .. ':att:' .. name, P .. ':rq:' .. name, P .. ':gpend:' .. name,
           P .. ':gown:' .. name, P .. ':gretry:' .. name)
local start = name .. '|'
for _, member in ipairs(redis.call('ZRANGE', P .. ':dead', 0, -1)) do
  if string.sub(member, 1, #start) == start then
    redis.call('ZREM', P .. ':dead', member)
    redis.call('HDEL', P .. ':deadmsg', member)
  end
end
return 0
"""

# ARGV: P, before. Owners recorded before ``before``: deleted if their subscription has no cursor
# (it never got one, or retention forgot it); the others only leave the time index, as retention
# deletes them with their cursor.
PURGE_OWNERS = r"""
local P = ARGV[1]
for _, name in ipairs(redis.call('ZRANGEBYSCORE', P .. ':subownert', '-inf', '(' .. ARGV[2])) do
  if redis.call('HEXISTS', P .. ':cursors', name) == 0 then
    redis.call('HDEL', P .. ':subowner', name)
  end
  redis.call('ZREM', P .. ':subownert', name)
end
return 0
"""

"""The cache's epoch: how a cluster notices that Redis lost its data (restarted empty, flushed).

``P epoch`` holds a random id. Whoever finds it missing creates a new one, and in the same script
moves the ``conn_id`` counter up to the Redis clock's milliseconds x 1024: a counter that restarted
from zero would hand out conn_ids that live connections still hold. The floor stays below 2^53 (so
JavaScript clients read conn_ids exactly) for centuries, and above every id of an earlier epoch as
long as that epoch allocated fewer than 1024 ids per millisecond on average.

``P ready:{epoch}`` is the set of proxies that re-registered their sessions for that epoch; logic
refuses pushes by mid or key (503) until every proxy it knew has done so, or the server TTL passed.
"""

from __future__ import annotations

# KEYS[1]: epoch, KEYS[2]: conn_id counter   ARGV[1]: a new random id. Defines ensure_epoch().
_ENSURE = """
local function ensure_epoch()
  local e = redis.call('GET', KEYS[1])
  if e then return e end
  local t = redis.call('TIME')
  local floor = (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) * 1024
  local c = tonumber(redis.call('GET', KEYS[2]) or '0')
  if c < floor then redis.call('SET', KEYS[2], string.format('%.0f', floor)) end
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
"""

# -> the epoch id
EPOCH = _ENSURE + "return ensure_epoch()\n"

# -> {epoch, new conn_id}: a conn_id is never allocated from a counter of a lost epoch
ALLOC = _ENSURE + """
local e = ensure_epoch()
return {e, redis.call('INCR', KEYS[2])}
"""

# KEYS: s:{cid}, u:{mid}, k:{key}, users   ARGV: session json, cid, ttl ms, mid
# add_session for a connection that already existed: it takes the key back only from an older
# connection (conn_ids grow), never from one that connected since the data was lost
RESTORE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
local holder = redis.call('GET', KEYS[3])
if (not holder) or tonumber(holder) <= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ttl)
end
redis.call('ZADD', KEYS[4], 'GT', string.format('%.0f', now + ttl), ARGV[4])
return 1
"""

# KEYS: s:{cid}, k:{key}   ARGV: session json, cid, ttl ms
# RESTORE for mid 0 (anonymous): no u: set and no place in users
RESTORE_ANON = """
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
local holder = redis.call('GET', KEYS[2])
if (not holder) or tonumber(holder) <= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
end
return 1
"""

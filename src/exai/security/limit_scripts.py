"""The rate limiter's Redis scripts: each check-and-count is one atomic round trip, on one replica or many.

Every script touches only one tenant's keys (they share the hash tag `{tenant}`), so they also run on Redis Cluster.
"""

ACQUIRE = """
local rpm_key, slots_key, tokens_key, text_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, rpm, concurrent, tokens_per_day = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, lease_ttl, request_id, prepay = ARGV[5], tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local spends_tokens, stored_chars_per_day = ARGV[9] ~= '0', tonumber(ARGV[10])
local used = tonumber(redis.call('GET', tokens_key) or '0')
local written = tonumber(redis.call('GET', text_key) or '0')
local tomorrow = tostring(86400 - (now % 86400))
if spends_tokens and used >= tokens_per_day then return {'tokens', tomorrow, 0, used, written} end
if stored_chars_per_day > 0 and written >= stored_chars_per_day then
  return {'stored_text', tomorrow, 0, used, written}
end
redis.call('ZREMRANGEBYSCORE', rpm_key, '-inf', now - 60)
if redis.call('ZCARD', rpm_key) >= rpm then
  local oldest = redis.call('ZRANGE', rpm_key, 0, 0, 'WITHSCORES')
  return {'rpm', tostring(tonumber(oldest[2]) + 60 - now), 0, used, written}
end
redis.call('ZREMRANGEBYSCORE', slots_key, '-inf', now)
if redis.call('ZCARD', slots_key) >= concurrent then return {'concurrency', '1', 0, used, written} end
redis.call('ZADD', rpm_key, now, request_id)
redis.call('EXPIRE', rpm_key, 120)
local prepaid = 0
if prepay > 0 and used + prepay <= tokens_per_day then
  used = redis.call('INCRBY', tokens_key, prepay)
  redis.call('EXPIRE', tokens_key, 172800)
  prepaid = prepay
end
redis.call('ZADD', slots_key, now + lease_ttl, lease .. ':' .. prepaid)
redis.call('EXPIRE', slots_key, math.ceil(lease_ttl) + 60)
return {'ok', '0', prepaid, used, written}
"""
"""The slot and, when it fits the day's budget, a prepayment of tokens; the slot's member names what was prepaid. A
call that spends no tokens (ARGV[9] '0') is not refused for a spent budget, nor one that writes no thread (ARGV[10]
0) for the day's stored text spent."""

GIVE_BACK = """
local slots_key, tokens_key, lease, prepay = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
if prepay > 0 and redis.call('ZREM', slots_key, lease .. ':' .. prepay) == 1 then
  if redis.call('DECRBY', tokens_key, prepay) < 0 then redis.call('SET', tokens_key, 0) end
end
redis.call('ZREM', slots_key, lease .. ':0')
return 0
"""
"""Undo an ACQUIRE whose answer was lost (the caller was cancelled, or the connection broke): slot and prepayment."""

RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local totals = {}
for i = 2, #KEYS do
  local total = redis.call('INCRBY', KEYS[i], ARGV[i])
  if total < 0 then
    redis.call('SET', KEYS[i], 0)
    total = 0
  end
  redis.call('EXPIRE', KEYS[i], 172800)
  totals[#totals + 1] = total
end
return totals
"""
"""Give the slot back and correct the day counters by the call's deltas: the token counts (one key per day the call
reserved in) by what the call used, and today's stored text by what the call stored."""

RESERVE_TOKENS = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if used + tokens > limit then return {0, used} end
used = redis.call('INCRBY', KEYS[1], tokens)
redis.call('EXPIRE', KEYS[1], 172800)
return {1, used}
"""

SETTLE_TOKENS = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if total < 0 then
  redis.call('SET', KEYS[1], 0)
  total = 0
end
redis.call('EXPIRE', KEYS[1], 172800)
return total
"""

COUNT_IN_WINDOW = """
local key, now, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 60)
if redis.call('ZCARD', key) >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {'limited', tostring(tonumber(oldest[2]) + 60 - now)}
end
redis.call('ZADD', key, now, ARGV[3])
redis.call('EXPIRE', key, 120)
return {'ok', '0'}
"""

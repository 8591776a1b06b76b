-- Keel's token bucket for one (route, key), atomically in Redis. It follows Spring Cloud
-- Gateway's request_rate_limiter.lua: two keys (tokens, timestamp) that expire after twice
-- the time the bucket takes to fill, a missing bucket is full, and a request takes
-- `requested` tokens or nothing. Unlike Spring's script it reads the clock to the
-- microsecond, so tokens arrive evenly instead of once a second. Values stay readable by
-- Spring's script: tokens as a number, the timestamp in (fractional) seconds.
--
-- KEYS[1]  tokens key     request_rate_limiter.{<route>.<key>}.tokens
-- KEYS[2]  timestamp key  request_rate_limiter.{<route>.<key>}.timestamp
-- ARGV[1]  replenish rate, tokens per second (>= 1)
-- ARGV[2]  burst capacity, tokens (>= 0)
-- ARGV[3]  requested tokens (>= 1)
-- Returns { allowed (1|0), whole tokens left, milliseconds until allowed (0 when allowed,
--           -1 when no wait helps) }.

-- Redis < 5 replicates scripts verbatim, which forbids writes after TIME; this switches
-- to effects replication there and does nothing on newer servers.
if redis.replicate_commands then
  redis.replicate_commands()
end

local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])

-- The server's clock, so every gateway instance agrees.
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000

local ttl = math.floor(capacity / rate * 2)

local tokens = tonumber(redis.call('GET', KEYS[1]))
if tokens == nil then
  tokens = capacity
end
local refreshed = tonumber(redis.call('GET', KEYS[2]))
if refreshed == nil then
  refreshed = 0
end

local filled = math.min(capacity, tokens + math.max(0, now - refreshed) * rate)
local allowed = 0
local left = filled
local wait_ms = -1
if filled >= requested then
  allowed = 1
  left = filled - requested
  wait_ms = 0
elseif requested <= capacity then
  wait_ms = math.ceil((requested - filled) * 1000 / rate)
end

-- A zero TTL (burst capacity 0) keeps no state, as in Spring.
if ttl > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', left), 'EX', ttl)
  redis.call('SET', KEYS[2], string.format('%.6f', now), 'EX', ttl)
end

return { allowed, math.floor(left), wait_ms }

-- tollgate: decides every counter in one atomic step. All KEYS share one cluster slot.
--
-- KEYS[i]  counter i (`tg:{hash}key`, see src/keys.rs).
-- ARGV     m, then m more counters' names (counters #KEYS + 1 ..; in a Cluster, keys of other slots
--          of this node, which the script is flagged to reach: `allow-cross-slot-keys`), then q and
--          q quotas of six values each, then four values per counter, in counter order. A quota:
--            algorithm, by its code in src/algorithm/mod.rs (0 sliding_window_estimate,
--              1 fixed_window, 2 sliding_log, 3 token_bucket, 4 leaky_bucket, 5 sliding_window),
--            limit L, window W in microseconds, burst B, sub-windows k (sliding_window; else 0),
--            and charge (1 always: denied hits are charged too, for fixed_window and the buckets;
--            else 0). A counter: its quota's number (1 .. q), hits n (at most capacity + 1, or
--            capacity + MAX_DEBT when charging always), time in microseconds since the epoch, or ""
--            to read Redis' TIME, and group g: a counter with g > 0 begins a group of g counters
--            decided all or none (all charged if every one fits, else none, each reported as it
--            stands; `all_or_none` below), g = 0 decides it alone. A batch's counters mostly share
--            a few quotas, so each is sent and parsed once.
-- Reply    four integers per counter: allowed (0/1), remaining, and reset_after in microseconds as
--          hi, lo (hi * 2^32 + lo), saturated at 2^64 - 1.
--
-- The math is src/algorithm/ in microseconds, decision for decision. Lua numbers are doubles, exact
-- below 2^53; times (< 2^53 us until the year 2255), windows (< 2^45 us) and counts (< 2^32) are, but
-- products such as prev * (W - e), B * W or L * elapsed reach 2^85, so those go through the wide
-- integers below: five limbs of 24 bits, multiplied exactly (each partial product < 2^48), compared,
-- added, subtracted, and divided by a number below 2^45 eight bits at a time (remainder * 256 + digit
-- stays below 2^53), with the double quotient of each step corrected by exact comparison.
--
-- State per algorithm (each key's TTL is set when it is written, to the moment its state becomes
-- equivalent to a fresh one, so an idle user leaves nothing; a denial writes nothing). A code names
-- one layout forever, and the counter key carries the code, so no layout is read as another:
--   fixed_window    string "start count"
--   sliding_window  string "last n0 n1 ... nm": the last admission's time and the hits of its
--                   sub-window and of the m <= k before it, newest first, trailing zeros dropped
--   sliding_window_estimate  string "last prev cur"
--   token/leaky     string "last hi lo", the level scaled by W being hi * 2^48 + lo
--   sliding_log     sorted set: one member per run of hits, scored by its time, named
--                   "cumulative:count" (cumulative hits through this run, and the run's own count),
--                   so the hits in any suffix are one subtraction and every search is by rank or
--                   score: O(log L) per admission, O(log^2 L) for the retry time of a denial.
-- A state met at or after its expiry (possible with an overridden time, whose TTLs get a grace
-- period since the test's clock is not Redis') is deleted and treated as fresh, as the memory store
-- does, so the decisions stay the same.

local R = 16777216 -- 2^24, the limb base
local NL = 5
local TWO32 = 4294967296
local TWO48 = 281474976710656
local MAX_TTL_MS = 70368744177664 -- 2^46 ms, about 2200 years
local GRACE_MS = 60000
local REBASE_AT = 1125899906842624 -- 2^50
local PLAIN = 4503599627370496 -- 2^52: below it a double quotient's error is fixed by one step
local MAX_DEBT = 4294967295 -- src/algorithm/mod.rs MAX_DEBT: hits of debt a state may carry
local fmod, floor, max, min = math.fmod, math.floor, math.max, math.min
local format, match = string.format, string.match
local tonumber, type = tonumber, type
local call = redis.call

-- A wide value is a number below 2^52, exact and the common case (no table, no limb arithmetic), or
-- five limbs; each operation takes either and answers a number whenever the result is below 2^52.
local function wide(x)
  local a = fmod(x, R)
  x = (x - a) / R
  local b = fmod(x, R)
  x = (x - b) / R
  return {a, b, x, 0, 0}
end

local function as_wide(x)
  if type(x) == 'table' then return x end
  return wide(x)
end

local function narrow(r)
  if r[5] == 0 and r[4] == 0 and r[3] < 16 then return r[1] + r[2] * R + r[3] * R * R end
  return r
end

local function norm(r)
  local c = 0
  for k = 1, NL do
    local v = r[k] + c
    local lo = fmod(v, R)
    r[k] = lo
    c = (v - lo) / R
  end
  return r
end

local function mul(x, y)
  local p = x * y
  -- The double product is exact when the true one is below 2^53, and is below 2^52 only then.
  if p < PLAIN then return p end
  local a, b = wide(x), wide(y)
  local r = {0, 0, 0, 0, 0}
  for i = 1, 3 do
    for j = 1, 3 do
      local k = i + j - 1
      r[k] = r[k] + a[i] * b[j]
    end
  end
  return norm(r)
end

local function add(a, b)
  if type(a) == 'number' and type(b) == 'number' and a + b < PLAIN then return a + b end
  a, b = as_wide(a), as_wide(b)
  local r = {}
  for k = 1, NL do r[k] = a[k] + b[k] end
  return narrow(norm(r))
end

local function cmp(a, b)
  if type(a) == 'number' and type(b) == 'number' then
    if a < b then return -1 end
    if a > b then return 1 end
    return 0
  end
  a, b = as_wide(a), as_wide(b)
  for k = NL, 1, -1 do
    if a[k] ~= b[k] then
      if a[k] < b[k] then return -1 end
      return 1
    end
  end
  return 0
end

-- a - b, or zero when b is larger.
local function sat_sub(a, b)
  if cmp(a, b) <= 0 then return 0 end
  if type(a) == 'number' and type(b) == 'number' then return a - b end
  a, b = as_wide(a), as_wide(b)
  local r, borrow = {}, 0
  for k = 1, NL do
    local v = a[k] - b[k] - borrow
    if v < 0 then
      v = v + R
      borrow = 1
    else
      borrow = 0
    end
    r[k] = v
  end
  return narrow(r)
end

local function is_zero(a)
  if type(a) == 'number' then return a == 0 end
  return a[1] == 0 and a[2] == 0 and a[3] == 0 and a[4] == 0 and a[5] == 0
end

local DIGIT = {65536, 256, 1}

-- floor(x / c) and x mod c for 0 <= x < 2^52: q * c <= x + c < 2^53 is exact, so is the fix-up.
local function plain_divmod(x, c)
  local q = floor(x / c)
  local r = x - q * c
  if r < 0 then
    q, r = q - 1, r + c
  elseif r >= c then
    q, r = q + 1, r - c
  end
  return q, r
end

-- floor(a / c) and a mod c, for 0 < c < 2^45.
local function divmod(a, c)
  if type(a) == 'table' then a = narrow(a) end
  if type(a) == 'number' and a < PLAIN then return plain_divmod(a, c) end
  a = as_wide(a)
  local q, r = {0, 0, 0, 0, 0}, 0
  for k = NL, 1, -1 do
    local limb, qk = a[k], 0
    for s = 1, 3 do
      local v = r * 256 + fmod(floor(limb / DIGIT[s]), 256)
      local qd = floor(v / c)
      r = v - qd * c
      if r < 0 then
        qd, r = qd - 1, r + c
      elseif r >= c then
        qd, r = qd + 1, r - c
      end
      qk = qk * 256 + qd
    end
    q[k] = qk
  end
  return narrow(q), r
end

local function ceil_div(a, c)
  local q, r = divmod(a, c)
  if r > 0 then q = add(q, 1) end
  return q
end

-- The value as a plain number, or nil at 2^53 and above.
local function plain(a)
  if type(a) == 'number' then return a end
  if a[4] ~= 0 or a[5] ~= 0 or a[3] >= 32 then return nil end
  return a[1] + a[2] * R + a[3] * R * R
end

-- hi, lo with hi * 2^32 + lo = a, saturated at 2^64 - 1.
local function split64(a)
  if type(a) == 'number' then
    local hi = floor(a / TWO32)
    return hi, a - hi * TWO32
  end
  if a[5] ~= 0 or a[4] ~= 0 or a[3] >= 65536 then return TWO32 - 1, TWO32 - 1 end
  local l = fmod(a[2], 256)
  return (a[2] - l) / 256 + a[3] * 65536, a[1] + l * R
end

local function from_hl(hi, lo)
  if hi < 16 then return hi * TWO48 + lo end
  local a = fmod(lo, R)
  local c = fmod(hi, R)
  local d = (hi - c) / R
  local e = fmod(d, R)
  return {a, (lo - a) / R, c, e, (d - e) / R}
end

local function to_hl(a)
  if type(a) == 'number' then
    local lo = fmod(a, TWO48)
    return (a - lo) / TWO48, lo
  end
  return a[3] + a[4] * R + a[5] * R * R, a[1] + a[2] * R
end

local function num(x)
  return format('%.0f', x)
end

-- Milliseconds from now until `at` (rounded up, at least 1), plus the grace of an overridden time.
local function ttl_ms(at, now, grace)
  local ms
  if type(at) == 'number' and at - now < PLAIN then
    local q, r = plain_divmod(max(at - now, 0), 1000)
    ms = q
    if r > 0 then ms = ms + 1 end
  else
    local q, r = divmod(sat_sub(at, now), 1000)
    ms = plain(q) or MAX_TTL_MS
    if r > 0 then ms = ms + 1 end
  end
  return num(max(1, min(ms, MAX_TTL_MS)) + grace)
end

-- Every fixed-window key ends at its window's edge, so Redis would expire them all at once, one
-- expire cycle stalling every caller for up to 25 ms; each lives on instead by up to an eighth of
-- a window past its edge, by the time of its last write. A key met past its window starts afresh.
local function spread(stop, now, W)
  return stop + fmod(now, floor(W / 8) + 1)
end

-- Writes a fixed window's state: `count` hits in the window from `start` to `stop`.
local function put_window(key, start, count, stop, now, W, grace)
  call('SET', key, format('%.0f %.0f', start, count), 'PX', ttl_ms(spread(stop, now, W), now, grace))
end

local function fixed_window(key, L, W, n, always, now, grace)
  local s_start, s_count = 0, 0
  local v = call('GET', key)
  if v then
    local a, b = match(v, '^(%d+) (%d+)$')
    if a then s_start, s_count = tonumber(a), tonumber(b) end
    if s_count == 0 or s_start + W <= now then
      call('DEL', key)
      s_start, s_count = 0, 0
    end
  end
  local t = max(now, s_start)
  local start = t - fmod(t, W)
  local used = 0
  if start == s_start then used = s_count end
  local stop = start + W
  local free = max(L - used, 0)
  if n == 0 then
    return free > 0 and 1 or 0, free, stop
  end
  if n > L or n > free then
    -- Charging always, denied hits are counted too, up to L + MAX_DEBT, until the window ends.
    if always then
      used = min(used + n, L + MAX_DEBT)
      put_window(key, start, used, stop, now, W, grace)
    end
    return 0, max(L - used, 0), stop
  end
  put_window(key, start, used + n, stop, now, W, grace)
  return 1, free - n, stop
end

-- When the estimate holds no hit again: two windows after one with hits, one after the previous.
local function swe_restored(cur, prev, start, W)
  if cur > 0 then return start + 2 * W end
  if prev > 0 then return start + W end
  return 0
end

-- When k <= L hits first fit: within this window where prev * (W - e') <= (L - cur - k) * W,
-- else within the next one, where cur has become the previous count.
local function swe_fits_at(k, L, cur, prev, start, e, W)
  if prev > 0 and cur + k <= L and L - cur - k < prev then
    local slack = plain((divmod(mul(L - cur - k, W), prev)))
    return start + max(W - slack, e)
  end
  local slack = W
  if cur > 0 and L - k < cur then slack = plain((divmod(mul(L - k, W), cur))) end
  return start + W + (W - slack)
end

local function sliding_window_estimate(key, L, W, n, now, grace)
  local last, s_prev, s_cur = 0, 0, 0
  local v = call('GET', key)
  if v then
    local a, b, c = match(v, '^(%d+) (%d+) (%d+)$')
    if a then last, s_prev, s_cur = tonumber(a), tonumber(b), tonumber(c) end
    local ls = last - fmod(last, W)
    local expires = 0
    if s_cur > 0 then
      expires = ls + 2 * W
    elseif s_prev > 0 then
      expires = ls + W
    end
    if expires <= now then
      call('DEL', key)
      last, s_prev, s_cur = 0, 0, 0
    end
  end
  local t = max(now, last)
  local start = t - fmod(t, W)
  local last_start = last - fmod(last, W)
  local prev, cur = 0, 0
  if start == last_start then
    prev, cur = s_prev, s_cur
  elseif start - last_start == W then
    prev = s_cur
  end
  local e = t - start
  -- The previous window's weight, ceil(prev * (W - e) / W): then n hits fit iff n <= L - cur - weight.
  local weight = 0
  if prev > 0 then
    local q, r = divmod(mul(prev, W - e), W)
    weight = plain(q)
    if r > 0 then weight = weight + 1 end
  end
  local free = max(L - cur - weight, 0)
  if n > L then return 0, free, swe_restored(cur, prev, start, W) end
  if n == 0 then
    if free >= 1 then return 1, free, swe_restored(cur, prev, start, W) end
    return 0, free, swe_fits_at(1, L, cur, prev, start, e, W)
  end
  if n > free then return 0, free, swe_fits_at(n, L, cur, prev, start, e, W) end
  cur = cur + n
  local at = swe_restored(cur, prev, start, W)
  call('SET', key, format('%.0f %.0f %.0f', t, prev, cur), 'PX', ttl_ms(at, now, grace))
  return 1, free - n, at
end

-- sliding_window: sub-window j(t) = floor(t * k / W) = q * k + s, with q = floor(t / W) and
-- s = floor((t mod W) * k / W); the hits of j(t) - k ..= j(t) count, and n fit iff they plus n are at
-- most L. Sub-window (q, s) is forgotten from (q + 1) * W + ceil((s + 1) * W / k). All plain: W < 2^45
-- and k <= 100, so (t mod W) * k and (s + 1) * W stay below 2^52.
local function sw_slot(t, W, k)
  local r = fmod(t, W)
  local s = plain_divmod(r * k, W)
  return (t - r) / W, s
end

local function sw_expiry(q, s, W, k)
  local c, r = plain_divmod((s + 1) * W, k)
  if r > 0 then c = c + 1 end
  return (q + 1) * W + c
end

-- When the sub-window i before (cq, cs) is forgotten.
local function sw_expiry_back(cq, cs, i, W, k)
  local q, s = cq, cs - i
  if s < 0 then q, s = q - 1, s + k end
  return sw_expiry(q, s, W, k)
end

-- When the newest live sub-window is forgotten (0 with none): the window is fresh again.
local function sw_restored(live, shift, cq, cs, W, k)
  for j = 1, #live do
    if live[j] > 0 then return sw_expiry_back(cq, cs, shift + j - 1, W, k) end
  end
  return 0
end

-- When enough of the oldest sub-windows have expired for m <= L more hits to fit.
local function sw_fits_at(m, L, used, live, shift, cq, cs, W, k)
  local excess, expired = used - (L - m), 0
  for j = #live, 1, -1 do
    expired = expired + live[j]
    if expired >= excess then return sw_expiry_back(cq, cs, shift + j - 1, W, k) end
  end
  return 0
end

local function sliding_window(key, L, W, k, n, now, grace)
  local last, counts = 0, {}
  local v = call('GET', key)
  if v then
    local i = 0
    for x in string.gmatch(v, '%d+') do
      if i == 0 then last = tonumber(x) else counts[i] = tonumber(x) end
      i = i + 1
    end
    local q, s = sw_slot(last, W, k)
    if #counts == 0 or sw_expiry(q, s, W, k) <= now then
      call('DEL', key)
      last, counts = 0, {}
    end
  end
  local t = max(now, last)
  local cq, cs = sw_slot(t, W, k)
  local lq, ls = sw_slot(last, W, k)
  local shift = k + 1
  if cq == lq then
    shift = cs - ls
  elseif cq - lq == 1 then
    shift = min(k + cs - ls, k + 1)
  end
  -- live[j]: the hits of the sub-window shift + j - 1 before t's, newest first.
  local live, used = {}, 0
  for j = 1, min(k + 1 - shift, #counts) do
    live[j] = counts[j]
    used = used + counts[j]
  end
  local free = max(L - used, 0)
  if n > L then return 0, free, sw_restored(live, shift, cq, cs, W, k) end
  if n == 0 and free > 0 then return 1, free, sw_restored(live, shift, cq, cs, W, k) end
  if n == 0 then return 0, free, sw_fits_at(1, L, used, live, shift, cq, cs, W, k) end
  if n > free then return 0, free, sw_fits_at(n, L, used, live, shift, cq, cs, W, k) end
  -- Counts (below 2^33) are joined as Lua prints numbers, exactly below 10^14; the time is not.
  local parts, top = {num(t)}, 0
  for j = 1, k + 1 do
    local c = 0
    if j > shift then c = live[j - shift] or 0 end
    if j == 1 then c = c + n end
    parts[j + 1] = c
    if c > 0 then top = j + 1 end
  end
  local at = sw_expiry(cq, cs, W, k)
  call('SET', key, table.concat(parts, ' ', 1, top), 'PX', ttl_ms(at, now, grace))
  return 1, free - n, at
end

-- token_bucket and leaky_bucket: the level, scaled by W, rises by W per hit and drains by L per us;
-- n hits fit iff level + n * W <= B * W.
-- When a level lv at time t has drained to empty; 0 if it is.
local function meter_empty_at(lv, t, L)
  if is_zero(lv) then return 0 end
  return add(t, ceil_div(lv, L))
end

-- When `need` more fits beside a level lv: when it has drained to capacity - need.
local function meter_fits_at(lv, need, capacity, t, L)
  return meter_empty_at(sat_sub(add(lv, need), capacity), t, L)
end

-- Whole hits that fit beside a level lv.
local function meter_free(lv, capacity, W)
  return plain((divmod(sat_sub(capacity, lv), W)))
end

local function meter_store(key, lv, t, L, now, grace)
  local hi, lo = to_hl(lv)
  call('SET', key, format('%.0f %.0f %.0f', t, hi, lo), 'PX', ttl_ms(meter_empty_at(lv, t, L), now, grace))
  return lv
end

-- Charging always: the level after n is charged whatever the decision, capped at (B + MAX_DEBT) W.
local function meter_charge(key, level, n, L, W, B, t, now, grace)
  local charged, ceiling = add(level, mul(n, W)), mul(B + MAX_DEBT, W)
  if cmp(charged, ceiling) > 0 then charged = ceiling end
  return meter_store(key, charged, t, L, now, grace)
end

local function meter(key, L, W, B, n, always, now, grace)
  local last, level = 0, 0
  local v = call('GET', key)
  if v then
    local a, hi, lo = match(v, '^(%d+) (%d+) (%d+)$')
    if a then last, level = tonumber(a), from_hl(tonumber(hi), tonumber(lo)) end
    if cmp(add(last, ceil_div(level, L)), now) <= 0 then
      call('DEL', key)
      last, level = 0, 0
    end
  end
  local capacity = mul(B, W)
  local t = max(now, last)
  level = sat_sub(level, mul(L, t - last))
  if n > B then
    if always then level = meter_charge(key, level, n, L, W, B, t, now, grace) end
    return 0, meter_free(level, capacity, W), meter_empty_at(level, t, L)
  end
  if n == 0 then
    local w = W
    if cmp(add(level, w), capacity) <= 0 then
      return 1, meter_free(level, capacity, W), meter_empty_at(level, t, L)
    end
    return 0, meter_free(level, capacity, W), meter_fits_at(level, w, capacity, t, L)
  end
  local need = mul(n, W)
  if cmp(add(level, need), capacity) > 0 then
    if always then level = meter_charge(key, level, n, L, W, B, t, now, grace) end
    return 0, meter_free(level, capacity, W), meter_fits_at(level, need, capacity, t, L)
  end
  level = meter_store(key, add(level, need), t, L, now, grace)
  return 1, meter_free(level, capacity, W), meter_empty_at(level, t, L)
end

local function run_of(member)
  local c, k = match(member, '^(%d+):(%d+)$')
  return tonumber(c), tonumber(k)
end

-- Keeps cumulative counts small: rewrites every run relative to the hits before the first one.
local function rebase(key)
  local all = call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local c0, k0 = run_of(all[1])
  local base = c0 - k0
  call('DEL', key)
  for i = 1, #all, 2 do
    local c, k = run_of(all[i])
    call('ZADD', key, all[i + 1], num(c - base) .. ':' .. num(k))
  end
end

local function sliding_log(key, L, W, n, now, grace)
  local count = call('ZCARD', key)
  local newest, total, last_member = nil, 0, nil
  if count > 0 then
    local last = call('ZRANGE', key, -1, -1, 'WITHSCORES')
    last_member, newest = last[1], tonumber(last[2])
    total = run_of(last_member)
    if newest + W <= now then
      call('DEL', key)
      count, newest, total, last_member = 0, nil, 0, nil
    end
  end
  local t = max(now, newest or 0)
  local first, before = 0, total
  if count > 0 then
    first = call('ZCOUNT', key, '-inf', num(t - W))
    if first < count then
      local c, k = run_of(call('ZRANGE', key, first, first)[1])
      before = c - k
    end
  end
  local live = total - before
  local free = max(L - live, 0)
  local function restored(lv, at)
    if lv == 0 then return 0 end
    return at + W
  end
  -- When enough of the oldest runs have expired for k <= L hits to fit.
  local function fits_at(k)
    local target = before + live - (L - k)
    local lo, hi = first, count - 1
    while lo < hi do
      local mid = floor((lo + hi) / 2)
      if run_of(call('ZRANGE', key, mid, mid)[1]) < target then
        lo = mid + 1
      else
        hi = mid
      end
    end
    return tonumber(call('ZRANGE', key, lo, lo, 'WITHSCORES')[2]) + W
  end
  if n > L then return 0, free, restored(live, newest or 0) end
  if n == 0 and free > 0 then return 1, free, restored(live, newest or 0) end
  if n == 0 then return 0, free, fits_at(1) end
  if n > free then return 0, free, fits_at(n) end
  if count > 0 and first >= count then
    call('DEL', key)
    total, last_member = 0, nil
  elseif first > 0 then
    call('ZREMRANGEBYRANK', key, 0, first - 1)
  end
  total = total + n
  if last_member and newest == t then
    local _, k = run_of(last_member)
    call('ZREM', key, last_member)
    call('ZADD', key, num(t), num(total) .. ':' .. num(k + n))
  else
    call('ZADD', key, num(t), num(total) .. ':' .. num(n))
  end
  if total > REBASE_AT then rebase(key) end
  call('PEXPIRE', key, ttl_ms(t + W, now, grace))
  return 1, free - n, t + W
end

local clock
local function now_of(arg)
  if arg ~= '' then return tonumber(arg), GRACE_MS end
  if not clock then
    local time = call('TIME')
    clock = tonumber(time[1]) * 1000000 + tonumber(time[2])
  end
  return clock, 0
end

local extra = tonumber(ARGV[1])
local counters = #KEYS + extra
local function key_of(i)
  if i <= #KEYS then return KEYS[i] end
  return ARGV[1 + i - #KEYS]
end

local quotas = {}
local at = 2 + extra
for q = 1, tonumber(ARGV[at]) do
  local j = at + (q - 1) * 6
  quotas[q] = {
    tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]),
    tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5]), ARGV[j + 6] == '1',
  }
end
local base = at + #quotas * 6

-- Runs counter i's algorithm with n hits: allowed, remaining, and the time of reset_after.
local function decide(i, n)
  local j = base + (i - 1) * 4
  local quota = quotas[tonumber(ARGV[j + 1])]
  if not quota then
    return nil, 'tollgate: unknown quota ' .. tostring(ARGV[j + 1])
  end
  local algorithm, L, W, B, k, always = quota[1], quota[2], quota[3], quota[4], quota[5], quota[6]
  local now, grace = now_of(ARGV[j + 3])
  local key = key_of(i)
  local allowed, remaining, at
  if algorithm == 5 then
    allowed, remaining, at = sliding_window(key, L, W, k, n, now, grace)
  elseif algorithm == 0 then
    allowed, remaining, at = sliding_window_estimate(key, L, W, n, now, grace)
  elseif algorithm == 1 then
    allowed, remaining, at = fixed_window(key, L, W, n, always, now, grace)
  elseif algorithm == 2 then
    allowed, remaining, at = sliding_log(key, L, W, n, now, grace)
  elseif algorithm == 3 or algorithm == 4 then
    allowed, remaining, at = meter(key, L, W, B, n, always, now, grace)
  else
    return nil, 'tollgate: unknown algorithm ' .. tostring(algorithm)
  end
  return allowed, remaining, at, now
end

local function hits_of(i)
  return tonumber(ARGV[base + (i - 1) * 4 + 2])
end

local out, replied = {}, 0
local function reply(allowed, remaining, at, now)
  local hi, lo
  if type(at) == 'number' and at - now < PLAIN then
    local d = max(at - now, 0)
    hi = floor(d / TWO32)
    lo = d - hi * TWO32
  else
    hi, lo = split64(sat_sub(at, now))
  end
  out[replied + 1] = allowed
  out[replied + 2] = remaining
  out[replied + 3] = hi
  out[replied + 4] = lo
  replied = replied + 4
end

-- Counters first..last all or none: each one's standing (its decision at 0 hits, which writes
-- nothing), then either every charge or none (src/store/all_or_none.rs: hits on one key, in order,
-- fit iff each one's max(n, 1) plus the hits before it on that key is at most the key's remaining).
local function all_or_none(first, last)
  local standing, fit, all, spent = {}, {}, true, {}
  for i = first, last do
    local allowed, remaining, at, now = decide(i, 0)
    if allowed == nil then return remaining end
    standing[i] = {allowed, remaining, at, now}
    local n, before = hits_of(i), spent[key_of(i)] or 0
    fit[i] = before + max(n, 1) <= remaining
    spent[key_of(i)] = before + n
    all = all and fit[i]
  end
  for i = first, last do
    if all then
      local allowed, remaining, at, now = decide(i, hits_of(i))
      reply(allowed, remaining, at, now)
    else
      local s = standing[i]
      reply(fit[i] and 1 or 0, s[2], s[3], s[4])
    end
  end
end

-- Keys beyond KEYS must be this node's: each is read first (pcall returns the refusal of a key
-- served elsewhere instead of raising it), so a batch that the routing misplaced writes nothing.
for i = #KEYS + 1, counters do
  local read = redis.pcall('EXISTS', key_of(i))
  if type(read) == 'table' and read.err then
    return redis.error_reply('TOLLGATE_NOT_LOCAL ' .. read.err)
  end
end

local i = 1
while i <= counters do
  local group = tonumber(ARGV[base + (i - 1) * 4 + 4])
  if group > 0 then
    local failed = all_or_none(i, i + group - 1)
    if failed then return redis.error_reply(failed) end
    i = i + group
  else
    local allowed, remaining, at, now = decide(i, hits_of(i))
    if allowed == nil then return redis.error_reply(remaining) end
    reply(allowed, remaining, at, now)
    i = i + 1
  end
end
return out

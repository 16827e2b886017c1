"""The online recall as a Redis function: the merge of jobs/online/recall.py run by the server.

An administrator loads the library (``FUNCTION LOAD REPLACE``, :func:`load_library`, run by
``tagrecall redis-acl --apply`` or ``tagrecall redis-acl --load-function``): FUNCTION LOAD has
no key scope, and a user allowed it could replace any other application's library on the
server, so neither the writer nor the reader may run it. ``publish`` (the writer) only checks
that this build's library is there (:func:`library_status`, a probe ``FCALL_RO`` with no
keys) and warns, naming the command that loads it, when it is not; the online recall (the
reader) calls it with ``FCALL_RO``. One call reads
``p:current``, the version's meta, the user's tags (or the global list) and the tags' lists,
merges them and returns the top k: a function runs atomically, so the answer is all of one
version, in one round trip, and k articles cross the network instead of the user's 20 x 200.
The library's name carries ``VERSION`` (``tagrecall_v1``, function ``tagrecall_recall_v1``):
a release that changes the function bumps it, so readers of the release before keep theirs;
tests/test_redis_merge.py pins the SHA-256 of :func:`library_source` to ``VERSION``, so a
change to the source without a bump fails there. The source also carries its own id (the
SHA-256 of the rest of it), which the probe returns, so publish notices a library of the
same name from another build.

How, with ``merge()``'s answer to the bit (tests/test_redis_merge.py checks it against
``merge()`` on random lists, every merge, ties included):

1. ``ZUNION`` of the user's tag lists, ``WEIGHTS`` w(rank) (``probability``: w(rank) / the
   tag's score sum), orders the union in C by an approximate score: Redis adds the sets
   smallest first, ``merge()`` in rank order, so its sums may differ in the last bits.
2. A window from the top of that order is scored again as ``merge()`` scores: each tag's
   score of each candidate (``ZMSCORE``), added tag by tag in rank order, ``probability``
   dividing by the tag's sum as ``math.fsum`` gives it (stored by publish in
   ``p:v:<version>:sums``; a version without it is summed here, by a port of CPython's
   fsum). The window widens until the union below it, whose ZUNION scores are at most the
   window's lowest, cannot reach the k-th rounded score. That bound holds for scores >= 0
   (ZUNION's error is then a few ulps of the sum); publish refuses negative and non-finite
   index scores, and where a list's lowest score is negative anyway (``ZRANGE key 0 0``) the
   function scores the whole union, so the answer is exact for any finite scores.
3. Rank weights ``1 / log2(1 + rank)`` are written into the library from Python's floats
   (Lua has no ``log2`` equal to the last bit), ranks 1 to ``MAX_RANK``; a deeper rank
   makes the function refuse, and the client merges in Python.
4. Rounding to 1e-9 is ``string.format("%.9f")`` read back by ``tonumber``: C's printf
   rounds the exact binary value half to even and strtod reads the nearest double, as
   Python's ``round(x, 9)`` does.
5. The tie rule (score desc, then article_id asc): a sorted set orders equal scores by
   member ascending, so ZREVRANGE returns ties by id *descending*. The function sorts its
   candidates itself by the rounded score, then by the ids' bytes (UTF-8 byte order is
   code-point order, Python's order of ``str``), compared byte by byte, not with Lua's
   ``<``, which calls ``strcoll`` (redis-server sets ``LC_COLLATE`` from its environment).
   ``quota`` reads each tag's list best first (``ZRANGE .. REV``) and takes each group of
   equal scores backwards (by id ascending); a group cut by the read is read whole
   (``ZRANGE s s BYSCORE``).

The ``via`` tags travel as a bit mask per article (bit i: the user's i-th tag), 50 bits a
number (a Lua number holds 53 exactly), decoded by the client. The tags and the articles
come back as one string each (:func:`unpack`): redis-py without hiredis parses a reply of
300 elements in about as long as the function takes to merge.

Who may run it: ``FCALL_RO`` of a function flagged ``no-writes`` is read-only; Redis checks
every command the function sends against the caller's ACL as if the caller had sent it, so
the reader of ``tagrecall redis-acl`` needs ``+fcall_ro`` and the read commands it sends
(:data:`COMMANDS_SENT`), and still writes nothing. The function checks them first
(``redis.acl_check_cmd``) and answers ``NOPERM`` naming the missing one, which redis-py
raises as NoPermissionError and the recall takes as a reason to merge in Python (Redis's own
error, mid-function, is a plain ResponseError). The writer needs ``+fcall_ro`` for the probe
only. Standalone Redis only (flag ``no-cluster``): the function reads keys it learns from
the pointer, which Redis Cluster would refuse (they are not declared in KEYS).
"""

from __future__ import annotations

import hashlib

from jobs.online.weights import rank_weight

VERSION = 1
LIBRARY = f"tagrecall_v{VERSION}"
FUNCTION = f"tagrecall_recall_v{VERSION}"
MAX_RANK = 1000  # export.top_n is 20; deeper ranks are merged in Python
MASK_BITS = 50
# The commands the function sends, as redis.acl_check_cmd checks them (a key under the prefix
# stands for each key): the reader's rules must allow every one.
COMMANDS_SENT = ("GET", "HGETALL", "ZRANGE", "HMGET", "ZUNION", "ZMSCORE", "ZCARD")
LOAD_COMMAND = "tagrecall redis-acl --apply (or --load-function), as an administrator"

_SOURCE = r"""#!lua name=@LIBRARY@

local W = {@WEIGHTS@}
local MASK_BITS = @MASK_BITS@
local SOURCE_ID = "@SOURCE_ID@"

-- Each command the function sends, checked against the caller's rules up front: Redis's own
-- refusal mid-function is a plain error, this one is NOPERM (redis-py: NoPermissionError).
local function refused(key)
  local probes = {
    {"GET", key}, {"HGETALL", key}, {"ZRANGE", key, "0", "0"}, {"HMGET", key, "f"},
    {"ZUNION", "1", key}, {"ZMSCORE", key, "m"}, {"ZCARD", key},
  }
  for _, p in ipairs(probes) do
    if not redis.acl_check_cmd(unpack(p)) then
      return redis.error_reply("NOPERM tagrecall: the reader may not run " .. p[1] ..
        " on " .. key .. "; re-apply `tagrecall redis-acl --apply`")
    end
  end
  return nil
end

-- jobs/online/keys.py escape(): percent-encode every byte but letters, digits and -._~@
local function escape(s)
  return (string.gsub(s, "[^A-Za-z0-9_%.%-~@]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

-- math.fsum: CPython's mathmodule.c (Shewchuk's partials, half-even fix-up), finite input.
local function fsum(xs, count)
  local p, n = {}, 0
  for j = 1, count do
    local x = xs[j]
    local i = 0
    for q = 1, n do
      local y = p[q]
      if math.abs(x) < math.abs(y) then x, y = y, x end
      local hi = x + y
      local lo = y - (hi - x)
      if lo ~= 0.0 then i = i + 1; p[i] = lo end
      x = hi
    end
    n = i
    if x ~= 0.0 then n = n + 1; p[n] = x end
  end
  local hi, lo = 0.0, 0.0
  if n > 0 then
    hi = p[n]; n = n - 1
    while n > 0 do
      local x, y = hi, p[n]
      n = n - 1
      hi = x + y
      lo = y - (hi - x)
      if lo ~= 0.0 then break end
    end
    if n > 0 and ((lo < 0.0 and p[n] < 0.0) or (lo > 0.0 and p[n] > 0.0)) then
      local y = lo * 2.0
      local x = hi + y
      if y == x - hi then hi = x end
    end
  end
  return hi
end

-- Python's round(x, 9): the exact binary value rounded half to even, read back as a double.
local function round9(x)
  return tonumber(string.format("%.9f", x))
end

-- a < b as Python compares str: by UTF-8 bytes (never strcoll)
local function bytes_less(a, b)
  local n = #a
  if #b < n then n = #b end
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- recall.quota_slots: places per listed tag
local function quota_slots(ranks, k)
  local m, w = #ranks, {}
  for i = 1, m do w[i] = W[ranks[i]] end
  local total = fsum(w, m)
  local exact, slots, sum, idx = {}, {}, 0, {}
  for i = 1, m do
    exact[i] = k * w[i] / total
    slots[i] = math.floor(exact[i])
    sum = sum + slots[i]
    idx[i] = i
  end
  table.sort(idx, function(a, b)
    local ra, rb = exact[a] - slots[a], exact[b] - slots[b]
    if ra ~= rb then return ra > rb end
    if ranks[a] ~= ranks[b] then return ranks[a] < ranks[b] end
    return a < b
  end)
  local extra = k - sum  -- Python's [:extra], a negative one included
  if extra < 0 then extra = m + extra end
  if extra > m then extra = m end
  for i = 1, extra do slots[idx[i]] = slots[idx[i]] + 1 end
  return slots
end

local function by_rounded(rounded)
  return function(a, b)
    local ra, rb = rounded[a], rounded[b]
    if ra ~= rb then return ra > rb end
    return bytes_less(a, b)
  end
end

-- the user's (tag, rank) pairs as "<bytes>:<tag> <rank>;"
local function pack_tags(tags)
  local out = {}
  for t = 1, #tags / 2 do
    local name = tags[2 * t - 1]
    out[t] = #name .. ":" .. name .. " " .. tags[2 * t] .. ";"
  end
  return table.concat(out)
end

local function recall(keys, args)
  -- the probe (FCALL_RO with no keys): which library, which build
  if #keys == 0 then return {"@LIBRARY@", SOURCE_ID} end
  local denied = refused(keys[1])
  if denied then return denied end
  local prefix, user, k = args[1], args[2], tonumber(args[3])
  local version = redis.call("GET", keys[1])
  if not version then return {} end
  local vp = prefix .. ":v:" .. version .. ":"
  local meta = redis.call("HGETALL", vp .. "meta")
  if #meta == 0 then
    return redis.error_reply("ERR tagrecall: " .. keys[1] .. " names version " .. version .. ", which has no meta")
  end
  local date, method = "", "rank_sum"
  for i = 1, #meta, 2 do
    if meta[i] == "date" then date = meta[i + 1] elseif meta[i] == "merge" then method = meta[i + 1] end
  end
  if method ~= "rank_sum" and method ~= "probability" and method ~= "quota" then
    return redis.error_reply("ERR tagrecall: unknown merge " .. method)
  end
  local source = "user"
  local tags = redis.call("ZRANGE", vp .. "user:" .. user, 0, -1, "WITHSCORES")
  if #tags == 0 then
    source = "global"
    tags = redis.call("ZRANGE", vp .. "global", 0, -1, "WITHSCORES")
  end
  local ntags = #tags / 2
  if ntags == 0 or k <= 0 then return {version, date, method, source, pack_tags(tags), ""} end
  local names, ranks, w, ks = {}, {}, {}, {}
  for t = 1, ntags do
    names[t] = tags[2 * t - 1]
    ranks[t] = math.floor(tonumber(tags[2 * t]))
    w[t] = W[ranks[t]]
    if w[t] == nil then return redis.error_reply("ERR tagrecall: rank " .. ranks[t] .. " beyond the library's weights") end
    ks[t] = vp .. "tag:" .. escape(names[t])
  end

  -- probability: p(article | tag) = score / the tag's fsum, stored by publish (older versions: summed here)
  local total = nil
  if method == "probability" then
    total = {}
    local stored = redis.call("HMGET", vp .. "sums", unpack(names))
    for t = 1, ntags do
      if stored[t] then
        total[t] = tonumber(stored[t])
      else
        local items = redis.call("ZRANGE", ks[t], 0, -1, "WITHSCORES")
        local vals = {}
        for j = 1, #items / 2 do vals[j] = tonumber(items[2 * j]) end
        total[t] = fsum(vals, #items / 2)
      end
    end
  end

  -- The union, ordered by ZUNION's weighted sum (ascending): a guide to where the top k are.
  -- Its sums add the sets in another order, so the candidates are scored again below.
  local zargs = {"ZUNION", ntags}
  for t = 1, ntags do zargs[t + 2] = ks[t] end
  zargs[ntags + 3] = "WEIGHTS"
  for t = 1, ntags do
    local zw = w[t]
    if total then
      if total[t] > 0 then zw = w[t] / total[t] else zw = 0.0 end
    end
    zargs[ntags + 3 + t] = string.format("%.17g", zw)
  end
  local union = redis.call(unpack(zargs))
  local nu = #union
  -- The window's bound assumes scores >= 0 (publish refuses others): with a negative score in
  -- any list, ZUNION's sums may cancel far from merge()'s, so every member is scored.
  local whole = false
  for t = 1, ntags do
    local lowest = redis.call("ZRANGE", ks[t], 0, 0, "WITHSCORES")
    if lowest[2] and tonumber(lowest[2]) < 0 then whole = true; break end
  end

  -- merge()'s score of each candidate: its terms added tag by tag in rank order
  local score, scored, masks = {}, {}, {}
  local function score_of(list, from, to)
    local batch, nb = {}, 0
    for i = from, to do
      local a = list[i]
      if not scored[a] then scored[a] = true; nb = nb + 1; batch[nb] = a end
    end
    for lo = 1, nb, 1000 do
      local part = {}
      for i = lo, math.min(nb, lo + 999) do part[#part + 1] = batch[i] end
      for t = 1, ntags do
        local got = redis.call("ZMSCORE", ks[t], unpack(part))
        local chunk = math.floor((t - 1) / MASK_BITS) + 1
        local bit = 2 ^ ((t - 1) % MASK_BITS)
        local vm = masks[chunk]
        if vm == nil then vm = {}; masks[chunk] = vm end
        for j = 1, #part do
          local s = got[j]
          if s then
            local a = part[j]
            s = tonumber(s)
            if total then
              if total[t] > 0 then s = s / total[t] else s = 0.0 end
            end
            score[a] = (score[a] or 0.0) + w[t] * s
            vm[a] = (vm[a] or 0) + bit
          end
        end
      end
    end
  end

  local rounded = {}
  local order = by_rounded(rounded)
  -- The best `want` of the union but `skip`, by (rounded score desc, id asc): score a window
  -- from the top of the union, widen it until the union below it cannot reach the want-th.
  local function best(want, skip)
    local out = {}
    if want <= 0 then return out end
    local lo, size = nu + 1, want + 1
    if whole then size = nu + 1 end
    while true do
      local cnt, from = 0, lo
      for i = lo, nu do if not skip[union[i]] then cnt = cnt + 1 end end
      while from > 1 and cnt < size do
        from = from - 1
        if not skip[union[from]] then cnt = cnt + 1 end
      end
      score_of(union, from, lo - 1)
      lo = from
      local cand = {}
      for i = lo, nu do
        local a = union[i]
        if not skip[a] then
          if rounded[a] == nil then rounded[a] = round9(score[a]) end
          cand[#cand + 1] = a
        end
      end
      table.sort(cand, order)
      local done = lo == 1 or #cand < want
      if not done then
        -- a member below holds ZUNION's sum <= union[lo]'s: merge()'s differs by a few ulps
        local bottom, kth = score[union[lo]], rounded[cand[want]]
        done = bottom + 1e-9 + math.abs(bottom) * 1e-12 < kth
      end
      if done then
        for i = 1, math.min(want, #cand) do out[i] = cand[i] end
        return out
      end
      size = size * 2
    end
  end

  local top
  if method == "quota" then
    local cards, listed, lranks = {}, {}, {}
    for t = 1, ntags do
      cards[t] = redis.call("ZCARD", ks[t])
      if cards[t] > 0 then listed[#listed + 1] = t; lranks[#lranks + 1] = ranks[t] end
    end
    local taken, tl, nt = {}, {}, 0
    local function take(a, left)
      if left > 0 and not taken[a] then taken[a] = true; nt = nt + 1; tl[nt] = a; return left - 1 end
      return left
    end
    if #listed > 0 then
      local slots = quota_slots(lranks, k)
      for i = 1, #listed do
        local t, left, pos = listed[i], slots[i], 0
        -- the tag's list best first, ties by id: REV reads ties by id descending, so each
        -- group of equal scores is taken backwards; a group cut by the read is read whole
        while left > 0 and pos < cards[t] do
          local got = redis.call("ZRANGE", ks[t], pos, pos + left + nt, "REV", "WITHSCORES")
          local m, j, moved = #got / 2, 1, nil
          while j <= m and left > 0 do
            local s, g = got[2 * j], j
            while g < m and got[2 * (g + 1)] == s do g = g + 1 end
            if g == m and pos + m < cards[t] then
              local group = redis.call("ZRANGE", ks[t], s, s, "BYSCORE")
              for q = 1, #group do left = take(group[q], left) end
              moved = pos + (j - 1) + #group
              break
            end
            for q = g, j, -1 do left = take(got[2 * q - 1], left) end
            j = g + 1
          end
          pos = moved or (pos + m)
        end
      end
      score_of(tl, 1, nt)
      for i = 1, nt do rounded[tl[i]] = rounded[tl[i]] or round9(score[tl[i]]) end
      table.sort(tl, order)
      top = {}
      for i = 1, math.min(k, nt) do top[i] = tl[i] end
      if nt < k then
        local more = best(k - nt, taken)
        for i = 1, #more do top[#top + 1] = more[i] end
        table.sort(top, order)
      end
    end
  end
  if top == nil then top = best(k, {}) end

  -- One string each ("<bytes>:<id> <score> <mask>;"): a reply of a few elements, which a
  -- client parses much faster than 300
  local out = {}
  for i = 1, #top do
    local a = top[i]
    local mask = string.format("%.0f", masks[1][a] or 0)
    for c = 2, #masks do mask = mask .. "," .. string.format("%.0f", masks[c][a] or 0) end
    out[i] = #a .. ":" .. a .. " " .. string.format("%.17g", rounded[a]) .. " " .. mask .. ";"
  end
  return {version, date, method, source, pack_tags(tags), table.concat(out)}
end

redis.register_function{function_name = "@FUNCTION@", callback = recall, flags = {"no-writes", "no-cluster"}}
"""


def _source_without_id() -> str:
    weights = ", ".join(repr(rank_weight(r)) for r in range(1, MAX_RANK + 1))
    return (_SOURCE.replace("@LIBRARY@", LIBRARY).replace("@FUNCTION@", FUNCTION)
            .replace("@WEIGHTS@", weights).replace("@MASK_BITS@", str(MASK_BITS)))


def source_id() -> str:
    """This build's library id: the first 16 hex digits of the SHA-256 of its source."""
    return hashlib.sha256(_source_without_id().encode()).hexdigest()[:16]


def library_source() -> str:
    """The library's Lua source, its rank weights written from Python's floats."""
    return _source_without_id().replace("@SOURCE_ID@", source_id())


def load_library(client) -> None:
    """FUNCTION LOAD REPLACE of this version's library, on an administrator's client: no
    tagrecall user may run FUNCTION LOAD (it has no key scope)."""
    client.function_load(library_source(), replace=True)


def library_status(client) -> str | None:
    """None when Redis holds this build's library, else what is wrong and what to run: a
    probe FCALL_RO with no keys, which the writer's and the reader's rules allow."""
    import redis

    try:
        name, loaded = (x.decode() if isinstance(x, bytes) else x for x in client.fcall_ro(FUNCTION, 0))
    except redis.exceptions.NoPermissionError as exc:
        return (f"the Redis user may not run FCALL_RO ({exc}); run {LOAD_COMMAND}, which also "
                f"sets the users' rules")
    except redis.ResponseError as exc:
        if "Function not found" not in str(exc):
            raise
        return f"Redis holds no library {LIBRARY}; run {LOAD_COMMAND}"
    if loaded != source_id():
        return (f"Redis holds library {name} of another build ({loaded}, this one is {source_id()}); "
                f"run {LOAD_COMMAND}")
    return None


def unpack(packed: str | bytes) -> list[list[str]]:
    """The function's "<bytes>:<text> <field> <field>;" records as [text, field, ...] lists
    (the length is in UTF-8 bytes, so any id, spaces and ';' included, reads back whole)."""
    data = packed.encode() if isinstance(packed, str) else packed
    out, pos = [], 0
    while pos < len(data):
        colon = data.index(b":", pos)
        start = colon + 1 + int(data[pos:colon])
        end = data.index(b";", start)
        out.append([data[colon + 1:start].decode(), *data[start + 1:end].decode().split(" ")])
        pos = end + 1
    return out


def via_tags(tags: list[str], masks: str) -> list[str]:
    """The tags of ``tags`` whose bits ``masks`` ("m1,m2,..": MASK_BITS tags a number) sets."""
    via = []
    for chunk, mask in enumerate(masks.split(",")):
        bits, base = int(mask), chunk * MASK_BITS
        while bits:
            low = bits & -bits
            via.append(tags[base + low.bit_length() - 1])
            bits ^= low
    return via

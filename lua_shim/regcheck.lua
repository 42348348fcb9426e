--[[
rspamd-regcheck: the rspamd plugin.
Copyright (C) 2026 the rspamd-regcheck authors.

This program is free software: you can redistribute it and/or modify it
under the terms of the GNU General Public License as published by the Free
Software Foundation, either version 3 of the License, or (at your option)
any later version.
]]--

--[[[
-- @module regcheck
-- Asks the rspamd-regcheck worker about each message's SMTP envelope (over
-- rspamd's own /checkv2 protocol) and inserts the REGCHECK_* symbols it
-- returns, with their dynamic weights and options. Fails open: whatever goes
-- wrong becomes REGCHECK_FAIL with the reason, scored 0.
--]]

local N = 'regcheck'

if confighelp then
  rspamd_config:add_example(nil, N,
      'Sender-registry check through the rspamd-regcheck worker',
      [[
regcheck {
  # Worker addresses; several are spread round robin, dead ones skipped
  servers = "127.0.0.1:11340";
  # Give up (REGCHECK_FAIL, score 0) after this long; keep it above the worker's dns.deadline
  timeout = 4s;
  # "score": symbols only; "enforce": the worker's enforce decision also sets an action
  mode = "score";
  # Shared secret (the worker's server.secret), sent as Password
  #secret = "...";
  # Check local and authenticated senders too (the worker skips them anyway by default)
  check_local = false;
  check_authed = false;
  # Results reused for the max-age the worker gives (at most cache_expire), per rspamd process
  cache_size = 10000;
  cache_expire = 1h;
  # Shared between rspamd hosts through Redis (else the global redis section, if any)
  #redis { servers = "127.0.0.1:6379"; }
  #use_redis = false;
}
]])
  return
end

local rspamd_logger = require "rspamd_logger"
local rspamd_http = require "rspamd_http"
local rspamd_util = require "rspamd_util"
local lua_util = require "lua_util"
local ucl = require "ucl"
local upstream_list = require "rspamd_upstream_list"
local lua_redis = require "lua_redis"
local rspamd_hash = require "rspamd_cryptobox_hash"
local ts = require("tableshape").types

-- Every symbol the worker can return (rspamd_regcheck/symbols.py, the single
-- source); tests/test_rules.py fails when the two lists differ.
local CATALOGUE = {
  'REGCHECK_CHECK', 'REGCHECK_FAIL',
  'REGCHECK_DNSBL', 'REGCHECK_DNSBL_BLOCKED', 'REGCHECK_DNSBL_DNSFAIL',
  'REGCHECK_BAD_HELO', 'REGCHECK_NO_RECORD', 'REGCHECK_STOP', 'REGCHECK_RECORD_PERMFAIL',
  'REGCHECK_DNSFAIL', 'REGCHECK_NO_RATINGS', 'REGCHECK_RATING_BAD', 'REGCHECK_RATING_LOW',
  'REGCHECK_RATING_HIGH', 'REGCHECK_QR1_ALLOW', 'REGCHECK_QR1_FAIL',
  'REGCHECK_SPF_ALLOW', 'REGCHECK_SPF_FAIL', 'REGCHECK_SPF_SOFTFAIL', 'REGCHECK_SPF_NEUTRAL',
  'REGCHECK_SPF_NA', 'REGCHECK_SPF_PERMFAIL', 'REGCHECK_SPF_DNSFAIL',
  'REGCHECK_CSA_ALLOW', 'REGCHECK_CSA_FAIL', 'REGCHECK_CSA_NA', 'REGCHECK_CSA_DNSFAIL',
  'REGCHECK_SID_ALLOW', 'REGCHECK_SID_FAIL', 'REGCHECK_SID_SOFTFAIL', 'REGCHECK_SID_NEUTRAL',
  'REGCHECK_SID_NA', 'REGCHECK_SID_PERMFAIL', 'REGCHECK_SID_DNSFAIL',
  'REGCHECK_DKIM_ALLOW', 'REGCHECK_UNVERIFIED', 'REGCHECK_BUDGET',
  'REGCHECK_SERVICE_BAD',
  'REGCHECK_UNVALIDATED',
}

local DEFAULT_PORT = 11340

local default_settings = {
  servers = '127.0.0.1:11340',
  path = '/checkv2',
  timeout = 4.0, -- seconds; the worker answers by its dns.deadline (3 s by default)
  retransmits = 1, -- another server is tried after a failure, while time is left
  mode = 'score',
  symbol_prefix = 'REGCHECK',
  check_local = false,
  check_authed = false,
  secret = nil,
  send_header_block = true, -- for Sender ID's PRA
  send_dkim = true, -- the d= of signatures rspamd verified
  -- the worker's slim reply (symbols, options, milter, enforce decision, max-age); 'full' for rspamd's shape
  reply_form = 'slim',
  -- results kept per rspamd process for the max-age the worker returns, at most cache_expire
  cache_size = 10000, -- entries; 0: no cache
  cache_expire = 3600, -- seconds
  -- the shared cache: redis { ... } here, else the global redis section; false: none
  use_redis = true,
  redis_prefix = 'rgc_',
}

-- Settings that moved to the worker's [policy] (it decides what enforce mode
-- does): accepted here so an old config still loads, and reported at load.
local MOVED_TO_WORKER = { 'enforce_no_record', 'enforce_invalid_record', 'never_reject' }

local settings_schema = ts.shape({
  servers = ts.string + ts.array_of(ts.string),
  path = ts.pattern('^/'),
  timeout = ts.number:is_optional(),
  retransmits = ts.number, -- not ts.integer: at 3.4 it hands back a string
  mode = ts.one_of({ 'score', 'enforce' }),
  symbol_prefix = ts.pattern('^[A-Z][A-Z0-9_]*$'),
  check_local = ts.boolean,
  check_authed = ts.boolean,
  secret = ts.string:is_optional(),
  send_header_block = ts.boolean,
  send_dkim = ts.boolean,
  enforce_no_record = ts.boolean:is_optional(),
  enforce_invalid_record = ts.boolean:is_optional(),
  never_reject = ts.array_of(ts.string):is_optional(),
  reply_form = ts.one_of({ 'slim', 'full' }),
  cache_size = ts.number,
  cache_expire = ts.number,
  use_redis = ts.boolean,
  redis_prefix = ts.string,
  redis = ts.table:is_optional(),
  enabled = ts.boolean:is_optional(),
})

------------------------------------------------------------------------------
-- Pure helpers (unit-tested through `rspamadm lua`, see tests/lua/): they
-- return `true, value` or `false, error`, and touch no task or socket.
------------------------------------------------------------------------------

local lib = {}

--- The symbol name under the configured prefix.
function lib.rename(name, prefix)
  if prefix == 'REGCHECK' then
    return name
  end
  return (name:gsub('^REGCHECK', prefix, 1))
end

--- The request headers for an envelope table (ip, helo, from, rcpts, hostname,
--- queue_id, user, dkim): names as rspamd sends them to itself.
function lib.request_headers(env, settings)
  local h = { Accept = 'application/msgpack' }
  if env.ip then h['IP'] = env.ip end
  if env.helo then h['Helo'] = env.helo end
  if env.from then h['From'] = env.from end
  if env.rcpts and #env.rcpts > 0 then h['Rcpt'] = env.rcpts end
  if env.hostname then h['Hostname'] = env.hostname end
  if env.queue_id then h['Queue-Id'] = env.queue_id end
  if env.user then h['User'] = env.user end
  if env.dkim and #env.dkim > 0 then h['Dkim-Domain'] = env.dkim end
  if settings.secret then h['Password'] = settings.secret end
  if settings.reply_form == 'slim' then h['Regcheck-Reply'] = 'slim' end
  return h
end

--- A msgpack decoder in Lua for the worker's replies: a cold scan's reply
--- decodes in about a fifth of the time ucl's msgpack parser and its
--- conversion to Lua tables take (bench/lua_side.py).  Strings, numbers,
--- booleans, nil, arrays and maps; ext types are refused.  Errors are raised
--- as strings and caught by lib.msgpack.
local byte, sub, ldexp, floor = string.byte, string.sub, math.ldexp, math.floor
local MSGPACK_MAX_DEPTH = 16 -- the slim reply nests 4 deep; anything deeper is not the worker's

local function mp_need(s, i, n)
  if i + n - 1 > #s then
    error('truncated', 0)
  end
end

local function mp_uint(s, i, n) -- n big-endian bytes at i
  local v = 0
  for k = i, i + n - 1 do
    v = v * 256 + byte(s, k)
  end
  return v
end

local function mp_float64(s, i) -- IEEE 754 binary64, big-endian
  local b1, b2, b3, b4, b5, b6, b7, b8 = byte(s, i, i + 7)
  local sign = b1 >= 128 and -1 or 1
  local exp = (b1 % 128) * 16 + floor(b2 / 16)
  local mant = ((((((b2 % 16) * 256 + b3) * 256 + b4) * 256 + b5) * 256 + b6) * 256 + b7) * 256 + b8
  if exp == 0 then
    return sign * ldexp(mant, -1074) -- subnormal (or zero)
  elseif exp == 2047 then
    return mant == 0 and sign * math.huge or 0 / 0
  end
  return sign * ldexp(mant + 4503599627370496, exp - 1075) -- 2^52: the implicit leading bit
end

local function mp_float32(s, i) -- IEEE 754 binary32, big-endian
  local b1, b2, b3, b4 = byte(s, i, i + 3)
  local sign = b1 >= 128 and -1 or 1
  local exp = (b1 % 128) * 2 + floor(b2 / 128)
  local mant = ((b2 % 128) * 256 + b3) * 256 + b4
  if exp == 0 then
    return sign * ldexp(mant, -149)
  elseif exp == 255 then
    return mant == 0 and sign * math.huge or 0 / 0
  end
  return sign * ldexp(mant + 8388608, exp - 150) -- 2^23
end

local mp_value

local function mp_container(s, i, n, is_map, depth)
  if depth >= MSGPACK_MAX_DEPTH then
    error('nested too deep', 0)
  end
  local t = {}
  if is_map then
    for _ = 1, n do
      local k, v
      k, i = mp_value(s, i, depth + 1)
      if type(k) ~= 'string' and type(k) ~= 'number' then
        error('a map key that is neither a string nor a number', 0)
      end
      v, i = mp_value(s, i, depth + 1)
      t[k] = v
    end
  else
    for k = 1, n do
      t[k], i = mp_value(s, i, depth + 1)
    end
  end
  return t, i
end

-- The value at i and the index after it.
mp_value = function(s, i, depth)
  local b = byte(s, i)
  if not b then
    error('truncated', 0)
  end
  if b < 0x80 then return b, i + 1 end -- positive fixint
  if b >= 0xe0 then return b - 256, i + 1 end -- negative fixint
  if b >= 0xa0 and b <= 0xbf then -- fixstr
    local n = b - 0xa0
    mp_need(s, i + 1, n)
    return sub(s, i + 1, i + n), i + 1 + n
  end
  if b <= 0x8f then return mp_container(s, i + 1, b - 0x80, true, depth) end -- fixmap
  if b <= 0x9f then return mp_container(s, i + 1, b - 0x90, false, depth) end -- fixarray
  if b == 0xc0 then return nil, i + 1 end
  if b == 0xc2 then return false, i + 1 end
  if b == 0xc3 then return true, i + 1 end
  if b == 0xcb then mp_need(s, i + 1, 8); return mp_float64(s, i + 1), i + 9 end
  if b == 0xca then mp_need(s, i + 1, 4); return mp_float32(s, i + 1), i + 5 end
  if b >= 0xcc and b <= 0xcf then -- uint 8/16/32/64
    local n = 2 ^ (b - 0xcc)
    mp_need(s, i + 1, n)
    return mp_uint(s, i + 1, n), i + 1 + n
  end
  if b >= 0xd0 and b <= 0xd3 then -- int 8/16/32/64
    local n = 2 ^ (b - 0xd0)
    mp_need(s, i + 1, n)
    if byte(s, i + 1) < 128 then
      return mp_uint(s, i + 1, n), i + 1 + n
    end
    local v = 0 -- negative: -(complement + 1), exact where a double is (|v| < 2^53)
    for k = i + 1, i + n do
      v = v * 256 + (255 - byte(s, k))
    end
    return -v - 1, i + 1 + n
  end
  if (b >= 0xd9 and b <= 0xdb) or (b >= 0xc4 and b <= 0xc6) then -- str 8/16/32, bin 8/16/32
    local w = 2 ^ (b >= 0xd9 and b - 0xd9 or b - 0xc4)
    mp_need(s, i + 1, w)
    local n = mp_uint(s, i + 1, w)
    mp_need(s, i + 1 + w, n)
    return sub(s, i + 1 + w, i + w + n), i + 1 + w + n
  end
  if b >= 0xdc and b <= 0xdf then -- array 16/32, map 16/32
    local w = (b == 0xdc or b == 0xde) and 2 or 4
    mp_need(s, i + 1, w)
    return mp_container(s, i + 1 + w, mp_uint(s, i + 1, w), b >= 0xde, depth)
  end
  error(string.format('no such type 0x%02x', b), 0)
end

--- Decode a msgpack string: true, value or false, error.
function lib.msgpack(s)
  local ok, v, after = pcall(mp_value, s, 1, 0)
  if not ok then
    return false, v
  end
  if after <= #s then
    return false, 'bytes after the value'
  end
  return true, v
end

--- Decode a reply body by its content type (ucl's "auto" misses msgpack maps).
function lib.decode(body, content_type)
  if not body or #body == 0 then
    return false, 'empty reply'
  end
  local obj
  if content_type and content_type:lower():find('application/msgpack', 1, true) then
    local ok, value = lib.msgpack(tostring(body))
    if not ok then
      return false, 'undecodable msgpack reply: ' .. value
    end
    obj = value
  else
    local parser = ucl.parser()
    local ok, err = parser:parse_string(tostring(body), 'json')
    if not ok then
      return false, 'undecodable json reply: ' .. tostring(err)
    end
    obj = parser:get_object()
  end
  if type(obj) ~= 'table' or obj[1] ~= nil then
    return false, 'reply is not an object'
  end
  return true, obj
end

local function by_name(a, b)
  return a.name < b.name
end

--- The symbols to insert: { {name, weight, options}, ... } sorted by name (a
--- group's max_score caps in insertion order, so the order must not vary).
function lib.symbols(obj, prefix)
  if type(obj.symbols) ~= 'table' then
    return false, 'reply has no symbols table'
  end
  local weights = type(obj.regcheck) == 'table' and obj.regcheck.weights or {}
  if type(weights) ~= 'table' then
    weights = {}
  end
  local out = {}
  for name, sym in pairs(obj.symbols) do
    if type(name) ~= 'string' or not name:match('^REGCHECK_[A-Z0-9_]+$') then
      return false, 'bad symbol name in reply: ' .. tostring(name)
    end
    local weight = tonumber(weights[name]) or 1.0
    local options = {}
    if type(sym) == 'table' and type(sym.options) == 'table' then
      for _, o in ipairs(sym.options) do
        options[#options + 1] = tostring(o)
      end
    end
    out[#out + 1] = { name = lib.rename(name, prefix), weight = weight, options = options }
  end
  table.sort(out, by_name)
  return true, out
end

--- milter.add_headers and milter.remove_headers of the reply, for set_milter_reply.
function lib.milter(obj)
  local m = obj.milter
  if type(m) ~= 'table' then
    return nil
  end
  local reply = {}
  if type(m.add_headers) == 'table' and next(m.add_headers) then
    reply.add_headers = {}
    for k, v in pairs(m.add_headers) do
      reply.add_headers[tostring(k)] = type(v) == 'table' and v or tostring(v)
    end
  end
  if type(m.remove_headers) == 'table' and next(m.remove_headers) then
    reply.remove_headers = {}
    for k, v in pairs(m.remove_headers) do
      reply.remove_headers[tostring(k)] = tonumber(v) or 0
    end
  end
  if not reply.add_headers and not reply.remove_headers then
    return nil
  end
  return reply
end

--- Enforce mode: the pre-result the worker decided (reply field
--- regcheck.enforce = {action, message}), applied as given: the rule lives in
--- the worker (rspamd_regcheck/_enforce.py), not here.
--- Returns true, action, message; true, nil for "no action" (a "no action"
--- pre-result would skip the rest of rspamd); false, error for a reply without
--- a usable decision.
local ENFORCE_ACTIONS = { ['reject'] = true, ['soft reject'] = true, ['add header'] = true }

function lib.enforcement(obj)
  local rc = obj.regcheck
  local decision = type(rc) == 'table' and rc.enforce or nil
  if type(decision) ~= 'table' or type(decision.action) ~= 'string' then
    return false, 'reply has no enforce decision (regcheck.enforce)'
  end
  local action = decision.action
  if action == 'no action' then
    return true, nil
  end
  if not ENFORCE_ACTIONS[action] then
    return false, 'unknown enforce action in reply: ' .. action
  end
  local message = decision.message
  if type(message) ~= 'string' or action == 'add header' then
    message = nil -- the mail is accepted: no SMTP text to give
  end
  return true, action, message
end

------------------------------------------------------------------------------
-- The result cache and the slim reply (pure, like the helpers above).
-- A cached entry is the prepared result of one check: the symbols to insert,
-- the milter headers and the enforce pre-result, never the reply itself.
------------------------------------------------------------------------------

--- The options of a slim symbol as strings: the decoded list itself when it
--- holds only strings (as the worker sends them), else a copy.
local function string_options(list)
  if type(list) ~= 'table' then
    return {}
  end
  for _, o in ipairs(list) do
    if type(o) ~= 'string' then
      local copy = {}
      for i, x in ipairs(list) do
        copy[i] = tostring(x)
      end
      return copy
    end
  end
  return list
end

--- The symbols of a slim reply ({ {name, weight, {options}}, ... }, sorted by
--- the worker) in the shape lib.symbols gives, sorted by name.
function lib.slim_symbols(obj, prefix)
  if type(obj.symbols) ~= 'table' then
    return false, 'reply has no symbols list'
  end
  local out, sorted = {}, true
  for i, s in ipairs(obj.symbols) do
    local name = type(s) == 'table' and s[1]
    if type(name) ~= 'string' or not name:match('^REGCHECK_[A-Z0-9_]+$') then
      return false, 'bad symbol name in reply: ' .. tostring(name)
    end
    out[i] = { name = lib.rename(name, prefix), weight = tonumber(s[2]) or 1.0, options = string_options(s[3]) }
    if i > 1 and out[i].name < out[i - 1].name then
      sorted = false
    end
  end
  if not sorted then -- the worker sorts them; another server may not
    table.sort(out, by_name)
  end
  return true, out
end

--- What one reply (slim or full) makes of a scan: { symbols, milter, action,
--- message, max_age, pra, rcpt, error }.  max_age is 0 for the full form (it
--- carries none).  In enforce mode action and message are the worker's
--- decision (lib.enforcement), for the slim form from its top-level enforce;
--- a reply without a usable one keeps its symbols and gets error (the scan
--- then shows REGCHECK_FAIL too), and is not kept.
function lib.prepare(obj, settings)
  local slim = obj.max_age ~= nil
  local ok, symbols
  if slim then
    ok, symbols = lib.slim_symbols(obj, settings.symbol_prefix)
  else
    ok, symbols = lib.symbols(obj, settings.symbol_prefix)
  end
  if not ok then
    return false, symbols
  end
  local entry = { symbols = symbols, milter = lib.milter(obj), max_age = 0 }
  if slim then
    entry.max_age = math.max(0, math.floor(tonumber(obj.max_age) or 0))
    entry.pra = obj.pra == true -- the result rests on the message's PRA too (Sender ID ran)
    entry.rcpt = obj.rcpt == true -- the enforce decision rests on the recipients too
    if type(obj.config) == 'string' then
      entry.config = obj.config -- the worker's configuration it was decided under
    end
  end
  if settings.mode == 'enforce' then
    local view = slim and { regcheck = { enforce = obj.enforce } } or obj
    local ok_enforce, action, message = lib.enforcement(view)
    if ok_enforce then
      entry.action, entry.message = action, message
    else
      entry.error, entry.max_age = action, 0
    end
  end
  return true, entry
end

--- The recipients' part of a cache key: their local parts (what the
--- worker's never_reject reads), lower-cased and sorted, each
--- length-prefixed.  The plugin does not know the worker's never_reject list,
--- so any change of local parts is another key; it is used only for results
--- whose enforce decision the worker says rests on the recipients (rcpt).
function lib.rcpt_material(rcpts)
  local locals = {}
  for _, addr in ipairs(rcpts or {}) do
    local lp = addr:match('^(.*)@') or addr -- the worker splits at the last @ too
    locals[#locals + 1] = lp:lower()
  end
  table.sort(locals)
  for i, lp in ipairs(locals) do
    locals[i] = #lp .. ':' .. lp
  end
  return table.concat(locals)
end

--- The cache key: every input the worker's result and enforce decision
--- depend on.  header_material is what the PRA can come from, for a result
--- that rests on it, false when it cannot be keyed (no key then);
--- rcpt_material (lib.rcpt_material) for a decision that rests on the
--- recipients.  Both nil: the key of the session alone.
local function part(v) -- length-prefixed: no value can run into the next
  if v == nil then return '-' end -- a missing value is not an empty one (MAIL FROM:<>)
  return #v .. ':' .. v
end

function lib.cache_key(env, header_material, rcpt_material)
  if header_material == false then
    return nil
  end
  return table.concat({
    part(env.ip), part(env.helo ~= '' and env.helo or nil), part(env.from), part(env.user ~= '' and env.user or nil),
    part(table.concat(env.dkim or {}, ',')), part(header_material), part(rcpt_material),
  })
end

--- A bounded map with expiry in two generations: a hit moves to the young
--- one; when the young one holds half the bound, the old one is dropped.
function lib.cache_new(size)
  return { half = math.max(1, math.floor(size / 2)), young = {}, old = {}, n = 0 }
end

function lib.cache_put(cache, key, value, expires)
  if cache.young[key] == nil then
    cache.n = cache.n + 1
  end
  cache.young[key] = { value, expires }
  cache.old[key] = nil
  if cache.n >= cache.half then
    cache.old, cache.young, cache.n = cache.young, {}, 0
  end
end

function lib.cache_get(cache, key, now)
  local e = cache.young[key]
  if e == nil then
    e = cache.old[key]
    if e == nil then
      return nil
    end
    if e[2] > now then
      lib.cache_put(cache, key, e[1], e[2])
    else
      cache.old[key] = nil
    end
  end
  if e[2] <= now then
    cache.young[key] = nil
    return nil
  end
  return e[1]
end

--- An entry as stored in Redis (JSON, with its absolute expiry), and back.
function lib.encode_entry(entry, expires)
  return ucl.to_format({ s = entry.symbols, m = entry.milter, a = entry.action, t = entry.message, e = expires,
                         p = entry.pra or nil, r = entry.rcpt or nil, c = entry.config }, 'json-compact')
end

function lib.decode_entry(text, prefix)
  if type(text) ~= 'string' then
    return false, 'no cached entry'
  end
  local parser = ucl.parser()
  local ok = parser:parse_string(text)
  local obj = ok and parser:get_object()
  if type(obj) ~= 'table' or type(obj.s) ~= 'table' or type(obj.e) ~= 'number' then
    return false, 'malformed cached entry'
  end
  local symbols = {}
  for _, s in ipairs(obj.s) do
    if type(s) ~= 'table' or type(s.name) ~= 'string' or s.name:sub(1, #prefix + 1) ~= prefix .. '_' then
      return false, 'malformed cached entry'
    end
    local options = {}
    for _, o in ipairs(type(s.options) == 'table' and s.options or {}) do
      options[#options + 1] = tostring(o)
    end
    symbols[#symbols + 1] = { name = s.name, weight = tonumber(s.weight) or 1.0, options = options }
  end
  local entry = { symbols = symbols, milter = type(obj.m) == 'table' and obj.m or nil,
                  action = type(obj.a) == 'string' and obj.a or nil,
                  message = type(obj.t) == 'string' and obj.t or nil, pra = obj.p == true,
                  rcpt = obj.r == true, config = type(obj.c) == 'string' and obj.c or nil }
  return true, entry, obj.e
end

if rawget(_G, 'REGCHECK_UNIT_TEST') then
  return lib -- loaded by the unit tests: no registration
end

------------------------------------------------------------------------------
-- The module
------------------------------------------------------------------------------

local settings = lua_util.override_defaults(default_settings, rspamd_config:get_all_opt(N) or {})
local config_error

local function sym(name)
  return lib.rename(name, settings.symbol_prefix)
end

local ok_schema, schema_err = settings_schema:transform(settings)
if not ok_schema then
  config_error = 'invalid settings: ' .. tostring(schema_err)
else
  settings = ok_schema
  for _, key in ipairs(MOVED_TO_WORKER) do
    if settings[key] ~= nil then
      rspamd_logger.warnx(rspamd_config,
          'regcheck: %s is ignored here: set it in the worker\'s [policy] (the worker decides enforce mode)', key)
    end
  end
  local servers = type(settings.servers) == 'table' and table.concat(settings.servers, ',') or settings.servers
  settings.upstreams = upstream_list.create(rspamd_config, servers, DEFAULT_PORT)
  if not settings.upstreams then
    config_error = 'cannot parse servers: ' .. tostring(servers)
  end
  if not settings.timeout or settings.timeout <= 0 then
    config_error = 'timeout must be a positive number of seconds'
  end
end

--- The part of the envelope the cache key reads (lib.cache_key): the client's
--- address, HELO, MAIL FROM, the authenticated user and the verified DKIM
--- domains.  A cache hit needs no more; the rest comes from complete().
local function session(task, ip, user)
  local env = { dkim = {}, user = user }
  if ip and ip:is_valid() then
    env.ip = ip:to_string()
  end
  env.helo = task:get_helo()
  local from = task:get_from('smtp')
  if from and from[1] then
    env.from = from[1].addr or ''
  end
  if settings.send_dkim then
    for _, res in ipairs(task:get_dkim_results() or {}) do
      if res.result == 'allow' and res.domain then
        env.dkim[#env.dkim + 1] = res.domain
      end
    end
  end
  return env
end

--- The rest of the envelope, read once when it is needed (a request to the
--- worker, or a key on the recipients): recipients, hostname, queue id.
local function complete(task, env)
  if env.rcpts then
    return env
  end
  env.rcpts = {}
  for _, r in ipairs(task:get_recipients('smtp') or {}) do
    if r.addr and r.addr ~= '' then
      env.rcpts[#env.rcpts + 1] = r.addr
    end
  end
  env.hostname = task:get_hostname()
  env.queue_id = task:get_queue_id()
  return env
end

local function fail(task, reason)
  rspamd_logger.infox(task, 'regcheck failed open: %s', reason)
  task:insert_result(sym('REGCHECK_FAIL'), 1.0, reason)
end

--- Insert a prepared result (lib.prepare): from a reply or from the cache.
local function apply_prepared(task, entry)
  for _, s in ipairs(entry.symbols) do
    task:insert_result(s.name, s.weight, s.options)
  end
  if entry.milter then
    task:set_milter_reply(entry.milter)
  end
  if entry.error then
    fail(task, entry.error) -- enforce mode, and the reply carried no usable decision
  elseif entry.action then
    task:set_pre_result({ action = entry.action, message = entry.message, module = N })
  end
end

local function apply(task, obj)
  local ok, entry = lib.prepare(obj, settings)
  if not ok then
    fail(task, entry)
    return nil
  end
  apply_prepared(task, entry)
  lua_util.debugm(N, task, 'inserted %s symbols', #entry.symbols)
  return entry
end

------------------------------------------------------------------------------
-- The result cache: per process, and shared through Redis when configured
------------------------------------------------------------------------------

local local_cache, redis_params, redis_salt
if not config_error and settings.cache_expire > 0 then
  if settings.cache_size > 0 then
    local_cache = lib.cache_new(settings.cache_size)
  end
  if settings.use_redis then
    -- `redis { }` in this module, else the global section, as rspamd's modules read them (not
    -- this module's own `servers`: those are the workers)
    redis_params = lua_redis.parse_redis_server(N, { redis = settings.redis })
    if redis_params then
      lua_redis.register_prefix(settings.redis_prefix .. '*', N, 'regcheck results shared between rspamd hosts')
      -- hosts with other symbol names or modes prepare other entries from one result (the enforce
      -- settings are the workers': hosts sharing a Redis are expected to share their workers' config)
      redis_salt = table.concat({ settings.symbol_prefix, settings.mode }, '\0')
    end
  end
end

--- What the PRA (Sender ID) can come from, for the key: the Sender and From
--- fields; false (do not cache) with Resent-* fields, whose order counts.
local function header_material(task)
  if not settings.send_header_block then
    return nil
  end
  if task:get_header('Resent-From') or task:get_header('Resent-Sender') then
    return false
  end
  local parts = {}
  for _, name in ipairs({ 'Sender', 'From' }) do
    for _, h in ipairs(task:get_header_full(name) or {}) do
      parts[#parts + 1] = name .. ':' .. tostring(h.value or '')
    end
  end
  return table.concat(parts, '\n')
end

-- The worker configuration (its fingerprint) the results kept here were decided under: the
-- last one a reply carried.  An entry in Redis says which it was decided under, and one from
-- another is not used once this process knows its workers' (entries kept before a reload).
local worker_config

local function redis_key(key)
  return settings.redis_prefix .. rspamd_hash.create(redis_salt .. '\0' .. key):base32():sub(1, 32)
end

--- A reply decided under another worker configuration than the last one (the
--- worker was reloaded, or a zone file or local list it reads changed): what
--- this process kept rests on the old one, so it goes.
local function note_config(task, fingerprint)
  if not fingerprint or fingerprint == worker_config then
    return
  end
  if worker_config ~= nil and local_cache then
    local_cache = lib.cache_new(settings.cache_size)
    rspamd_logger.infox(task, 'regcheck: the worker configuration changed (%s -> %s): kept results dropped',
        worker_config, fingerprint)
  end
  worker_config = fingerprint
end

--- Whether a (cached or new) entry rests on more than the session: the PRA
--- (pra, when the header block is sent) or, in enforce mode, the recipients
--- (rcpt: score mode applies no decision, so they cannot change its scan).
local function rests_on_more(entry)
  return (entry.pra and settings.send_header_block) or (entry.rcpt and settings.mode == 'enforce')
end

--- The key of a result that rests on more than the session: the session's
--- inputs, the header fields the PRA comes from and the recipients' local
--- parts, as the entry needs them; nil when the headers cannot be keyed.
local function detail_key(task, env, entry)
  local headers, rcpts
  if entry.pra and settings.send_header_block then
    headers = header_material(task)
  end
  if entry.rcpt and settings.mode == 'enforce' then
    rcpts = lib.rcpt_material(complete(task, env).rcpts)
  end
  return lib.cache_key(env, headers, rcpts)
end

local function store(task, key, entry, ttl, expires)
  if local_cache then
    lib.cache_put(local_cache, key, entry, expires)
  end
  if redis_params then
    local rkey = redis_key(key)
    local function saved(err)
      if err then
        rspamd_logger.infox(task, 'regcheck: cannot save to the redis cache: %s', err)
      end
    end
    lua_redis.redis_make_request(task, redis_params, rkey, true, saved, 'SETEX',
        { rkey, tostring(ttl), lib.encode_entry(entry, expires) })
  end
end

--- Keep a prepared result for its max-age (at most cache_expire); nothing for
--- 0.  Under the session's key; one that rests on the PRA or the recipients
--- also under its detail key (the session's key then only says so: a lookup
--- finds pra or rcpt there and looks again under the message's own detail key).
local function remember(task, env, base, entry)
  local ttl = math.floor(math.min(entry.max_age, settings.cache_expire))
  if not base or ttl < 1 then
    return
  end
  local expires = rspamd_util.get_time() + ttl
  store(task, base, entry, ttl, expires)
  if rests_on_more(entry) then
    local key = detail_key(task, env, entry)
    if key then
      store(task, key, entry, ttl, expires)
    end
  end
end

--- Look the key up in Redis; done(entry) or done(nil) (also on errors).
local function redis_lookup(task, key, done)
  local function got(err, data)
    if err then
      rspamd_logger.infox(task, 'regcheck: redis cache lookup failed: %s', err)
    elseif type(data) == 'string' then -- a missing key comes as a null userdata
      local ok, entry, expires = lib.decode_entry(data, settings.symbol_prefix)
      if ok and worker_config and entry.config and entry.config ~= worker_config then
        lua_util.debugm(N, task, 'redis cache entry decided under another worker configuration: not used')
      elseif ok and expires > rspamd_util.get_time() then
        if local_cache then
          lib.cache_put(local_cache, key, entry, expires)
        end
        lua_util.debugm(N, task, 'result from the redis cache')
        done(entry)
        return
      end
    end
    done(nil)
  end
  local rkey = redis_key(key)
  if not lua_redis.redis_make_request(task, redis_params, rkey, false, got, 'GET', { rkey }) then
    done(nil)
  end
end

--- The cached entry for key, from this process or Redis: done(entry) or done(nil).
local function find(task, key, done)
  if local_cache then
    local entry = lib.cache_get(local_cache, key, rspamd_util.get_time())
    if entry then
      done(entry)
      return
    end
  end
  if redis_params then
    redis_lookup(task, key, done)
    return
  end
  done(nil)
end

local function ask_worker(task, env, key)
  local headers = lib.request_headers(complete(task, env), settings)
  local body = ''
  if settings.send_header_block then
    body = task:get_raw_headers() or '' -- rspamd_text: sent as it is, not copied into a Lua string
  end
  local started = rspamd_util.get_ticks()

  local function ask(upstream, retransmits)
    local addr = upstream:get_addr()
    local port = addr:get_port()
    if port == 0 then
      port = DEFAULT_PORT
    end
    local host = addr:to_string()
    if addr:get_version() == 6 then
      host = '[' .. host .. ']'
    end
    local where = string.format('%s:%d', host, port) -- failure reasons name the server with its port
    local remaining = settings.timeout - (rspamd_util.get_ticks() - started)

    local function on_reply(err, code, reply_body, reply_headers)
      local left = settings.timeout - (rspamd_util.get_ticks() - started)
      if err then
        upstream:fail()
        if retransmits > 0 and left > 0.05 then
          ask(settings.upstreams:get_upstream_round_robin(), retransmits - 1)
          return
        end
        fail(task, string.format('%s: %s', where, err))
        return
      end
      if code ~= 200 then
        if code >= 500 then
          upstream:fail()
        end
        local why = ''
        local ok, obj = lib.decode(reply_body, (reply_headers or {})['content-type'])
        if ok and obj.error then
          why = ': ' .. tostring(obj.error)
        end
        fail(task, string.format('%s: HTTP %s%s', where, code, why))
        return
      end
      upstream:ok()
      local ok, obj = lib.decode(reply_body, (reply_headers or {})['content-type'])
      if not ok then
        fail(task, obj)
        return
      end
      local entry = apply(task, obj)
      if entry then
        note_config(task, entry.config)
        remember(task, env, key, entry)
      end
    end

    local queued = rspamd_http.request({
      task = task,
      url = string.format('http://%s:%d%s', host, port, settings.path),
      body = body,
      method = 'POST',
      mime_type = 'text/plain',
      headers = headers,
      timeout = remaining,
      keepalive = true,
      callback = on_reply,
    })
    if not queued then
      fail(task, 'cannot send the request to ' .. where)
    end
  end

  ask(settings.upstreams:get_upstream_round_robin(), settings.retransmits)
end

local function regcheck_cb(task)
  -- lua_util.is_skip_local_or_authed's test, with the address and user read once for the key too
  local ip, user = task:get_from_ip(), task:get_user()
  if (user and not settings.check_authed) or (not settings.check_local and ip and ip:is_local()) then
    return
  end
  local env = session(task, ip, user)
  if not (local_cache or redis_params) then
    ask_worker(task, env, nil)
    return
  end
  -- The session's key first: most results read neither the message's headers nor its recipients.
  local base = lib.cache_key(env, nil, nil)
  find(task, base, function(entry)
    if entry and rests_on_more(entry) then
      local key = detail_key(task, env, entry) -- look for this message's PRA and recipients
      if not key then
        ask_worker(task, env, base)
        return
      end
      find(task, key, function(hit)
        if hit then
          apply_prepared(task, hit)
        else
          ask_worker(task, env, base)
        end
      end)
      return
    end
    if entry then
      lua_util.debugm(N, task, 'result from the cache')
      apply_prepared(task, entry)
    else
      ask_worker(task, env, base)
    end
  end)
end

local function config_fail_cb(task)
  task:insert_result(sym('REGCHECK_FAIL'), 1.0, 'config error: ' .. config_error)
end

if config_error then
  rspamd_logger.errx(rspamd_config, 'regcheck: %s; every scan will show %s', config_error, sym('REGCHECK_FAIL'))
end

local id = rspamd_config:register_symbol({
  name = sym('REGCHECK_CHECK'),
  type = 'callback',
  callback = config_error and config_fail_cb or regcheck_cb,
  group = N,
  score = 0.0,
  flags = 'empty',
  augmentations = { string.format('timeout=%f', tonumber(settings.timeout) or 0) },
})

for _, name in ipairs(CATALOGUE) do
  if name ~= 'REGCHECK_CHECK' then
    rspamd_config:register_symbol({
      name = sym(name),
      type = 'virtual',
      parent = id,
      group = N,
      score = 0.0,
    })
  end
end

-- The verified DKIM domains are read after rspamd's DKIM check has run.
if not config_error and settings.send_dkim and rspamd_config:get_symbol_flags('DKIM_CHECK') then
  rspamd_config:register_dependency(sym('REGCHECK_CHECK'), 'DKIM_CHECK')
end

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
  return h
end

--- Decode a reply body by its content type (ucl's "auto" misses msgpack maps).
function lib.decode(body, content_type)
  if not body or #body == 0 then
    return false, 'empty reply'
  end
  local parser = ucl.parser()
  local fmt = 'json'
  if content_type and content_type:lower():find('application/msgpack', 1, true) then
    fmt = 'msgpack'
  end
  local ok, err = parser:parse_string(tostring(body), fmt)
  if not ok then
    return false, string.format('undecodable %s reply: %s', fmt, err)
  end
  local obj = parser:get_object()
  if type(obj) ~= 'table' or obj[1] ~= nil then
    return false, 'reply is not an object'
  end
  return true, obj
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
  table.sort(out, function(a, b) return a.name < b.name end)
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

local auth_and_local_conf = { settings.check_local, settings.check_authed }

local function envelope(task)
  local env = { rcpts = {}, dkim = {} }
  local ip = task:get_from_ip()
  if ip and ip:is_valid() then
    env.ip = ip:to_string()
  end
  env.helo = task:get_helo()
  local from = task:get_from('smtp')
  if from and from[1] then
    env.from = from[1].addr or ''
  end
  for _, r in ipairs(task:get_recipients('smtp') or {}) do
    if r.addr and r.addr ~= '' then
      env.rcpts[#env.rcpts + 1] = r.addr
    end
  end
  env.hostname = task:get_hostname()
  env.queue_id = task:get_queue_id()
  env.user = task:get_user()
  if settings.send_dkim then
    for _, res in ipairs(task:get_dkim_results() or {}) do
      if res.result == 'allow' and res.domain then
        env.dkim[#env.dkim + 1] = res.domain
      end
    end
  end
  return env
end

local function fail(task, reason)
  rspamd_logger.infox(task, 'regcheck failed open: %s', reason)
  task:insert_result(sym('REGCHECK_FAIL'), 1.0, reason)
end

local function apply(task, obj)
  local ok, symbols = lib.symbols(obj, settings.symbol_prefix)
  if not ok then
    fail(task, symbols)
    return
  end
  for _, s in ipairs(symbols) do
    task:insert_result(s.name, s.weight, s.options)
  end
  local milter = lib.milter(obj)
  if milter then
    task:set_milter_reply(milter)
  end
  if settings.mode == 'enforce' then
    local ok_enforce, action, message = lib.enforcement(obj)
    if not ok_enforce then
      fail(task, action)
    elseif action then
      task:set_pre_result({ action = action, message = message, module = N })
    end
  end
  lua_util.debugm(N, task, 'inserted %s symbols', #symbols)
end

local function regcheck_cb(task)
  if lua_util.is_skip_local_or_authed(task, auth_and_local_conf, task:get_from_ip()) then
    return
  end
  local env = envelope(task)
  local headers = lib.request_headers(env, settings)
  local body = ''
  if settings.send_header_block then
    body = tostring(task:get_raw_headers() or '')
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
      apply(task, obj)
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

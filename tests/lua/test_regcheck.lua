-- Unit tests of the plugin's pure helpers, run by `rspamadm lua` (tests/test_lua.py).
-- Usage: rspamadm lua -a /path/to/lua_shim/regcheck.lua tests/lua/test_regcheck.lua
-- Prints one line per failure and a last line "N passed, M failed".

REGCHECK_UNIT_TEST = true
local lib = dofile(arg[1])
local ucl = require "ucl"

local passed, failed = 0, 0

local function check(name, cond, detail)
  if cond then
    passed = passed + 1
  else
    failed = failed + 1
    local text = type(detail) == 'table' and '(table)' or (detail ~= nil and tostring(detail) or '')
    print('FAIL ' .. name .. ': ' .. text)
  end
end

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= 'table' then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k, _ in pairs(b) do if a[k] == nil then return false end end
  return true
end

local settings = { secret = nil }

-- request headers
local h = lib.request_headers({ ip = '192.0.2.1', helo = 'mx.a.example', from = 'x@a.example',
  rcpts = { 'r1@b.example', 'r2@b.example' }, queue_id = 'Q1', dkim = { 'a.example' } }, settings)
check('headers: ip', h['IP'] == '192.0.2.1')
check('headers: helo', h['Helo'] == 'mx.a.example')
check('headers: repeated Rcpt', same(h['Rcpt'], { 'r1@b.example', 'r2@b.example' }))
check('headers: queue id', h['Queue-Id'] == 'Q1')
check('headers: dkim', same(h['Dkim-Domain'], { 'a.example' }))
check('headers: msgpack wanted', h['Accept'] == 'application/msgpack')
check('headers: no password without a secret', h['Password'] == nil)
local h2 = lib.request_headers({ from = '' }, { secret = 's3cret' })
check('headers: null sender kept', h2['From'] == '')
check('headers: password', h2['Password'] == 's3cret')
check('headers: nothing for a missing ip', h2['IP'] == nil and h2['Rcpt'] == nil)

-- decoding by content type
local reply = {
  symbols = {
    REGCHECK_QR1_FAIL = { name = 'REGCHECK_QR1_FAIL', score = 6.0, options = { 'heaven.net', '208.20.133.32' } },
    REGCHECK_RATING_LOW = { name = 'REGCHECK_RATING_LOW', score = 0.5, options = { 'heaven.net', 42 } },
  },
  milter = { add_headers = { ['X-Regcheck'] = 'a b' }, remove_headers = { ['X-Regcheck'] = 0 } },
  regcheck = { weights = { REGCHECK_QR1_FAIL = 1.0, REGCHECK_RATING_LOW = 0.5 },
               verdict = { action = 'REJECT', smtp_code = 550, xcode = '5.7.1', message = 'no' } },
}
local ok, obj = lib.decode(ucl.to_format(reply, 'json-compact'), 'application/json')
check('decode: json', ok and obj.symbols.REGCHECK_QR1_FAIL.score == 6.0, obj)
ok, obj = lib.decode(ucl.to_format(reply, 'msgpack'), 'application/msgpack')
check('decode: msgpack by content type', ok and obj.regcheck.verdict.smtp_code == 550, obj)
ok, obj = lib.decode('\193\193', 'application/msgpack')
check('decode: garbage msgpack', not ok and obj:find('undecodable msgpack', 1, true), obj)
ok, obj = lib.decode('{"a": ', 'application/json')
check('decode: truncated json', not ok and obj:find('undecodable json', 1, true), obj)
ok, obj = lib.decode('', 'application/json')
check('decode: empty', not ok and obj == 'empty reply', obj)
ok, obj = lib.decode('[1,2]', 'application/json')
check('decode: not an object', not ok, obj)

-- symbols: sorted, weights, options as strings
local syms
ok, syms = lib.symbols(reply, 'REGCHECK')
check('symbols: ok', ok, syms)
check('symbols: sorted by name', syms[1].name == 'REGCHECK_QR1_FAIL' and syms[2].name == 'REGCHECK_RATING_LOW')
check('symbols: dynamic weight', syms[2].weight == 0.5)
check('symbols: options are strings', syms[2].options[2] == '42' and type(syms[2].options[2]) == 'string')
ok, syms = lib.symbols(reply, 'RC')
check('symbols: prefix', ok and syms[1].name == 'RC_QR1_FAIL', syms and syms[1] and syms[1].name)
ok = lib.symbols({ symbols = { ['bad name'] = {} } }, 'REGCHECK')
check('symbols: refuses a foreign name', not ok)
ok = lib.symbols({}, 'REGCHECK')
check('symbols: refuses a reply without symbols', not ok)

-- milter
local m = lib.milter(reply)
check('milter: add', m.add_headers['X-Regcheck'] == 'a b')
check('milter: remove', m.remove_headers['X-Regcheck'] == 0)
check('milter: none', lib.milter({ milter = { add_headers = {}, remove_headers = {} } }) == nil)

-- enforce mode: the worker's decision (regcheck.enforce) applied as given
local function decided(action, message)
  return { symbols = {}, regcheck = { enforce = { action = action, message = message } } }
end
local eok, act, msg = lib.enforcement(decided('reject', '550 5.7.1 not authorised'))
check('enforce: reject as given', eok and act == 'reject' and msg == '550 5.7.1 not authorised', msg)
eok, act, msg = lib.enforcement(decided('soft reject', '451 4.4.3 try later'))
check('enforce: soft reject as given', eok and act == 'soft reject' and msg == '451 4.4.3 try later', msg)
eok, act, msg = lib.enforcement(decided('add header', 'ignored'))
check('enforce: add header, no SMTP text', eok and act == 'add header' and msg == nil)
eok, act = lib.enforcement(decided('no action'))
check('enforce: no action sets no pre-result', eok and act == nil)
eok, act = lib.enforcement({ symbols = {}, regcheck = { verdict = { action = 'REJECT' } } })
check('enforce: a reply without a decision is a failure', not eok and act:find('regcheck.enforce', 1, true), act)
eok, act = lib.enforcement(decided('discard'))
check('enforce: an unknown action is a failure', not eok and act:find('discard', 1, true), act)

print(string.format('%d passed, %d failed', passed, failed))
if failed > 0 then os.exit(1) end

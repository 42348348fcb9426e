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

-- The msgpack decoder (lib.msgpack) the plugin reads the worker's replies with.
-- { id, the encoded bytes (msgpack spec, "formats" section), the value }
local VALUES = {
  { 'positive fixint', '\5', 5 },
  { 'positive fixint, largest', '\127', 127 },
  { 'negative fixint', '\255', -1 },
  { 'negative fixint, smallest', '\224', -32 },
  { 'uint8', '\204\255', 255 },
  { 'uint16', '\205\1\0', 256 },
  { 'uint32', '\206\0\1\0\0', 65536 },
  { 'uint64', '\207\0\0\0\1\0\0\0\0', 4294967296 },
  { 'int8', '\208\128', -128 },
  { 'int16', '\209\255\0', -256 },
  { 'int32', '\210\255\255\255\255', -1 },
  { 'int64', '\211\255\255\255\255\255\255\255\254', -2 },
  { 'float64, a weight', '\203\63\235\188\1\163\110\46\178', 0.8667 },
  { 'float64, negative', '\203\192\4\0\0\0\0\0\0', -2.5 },
  { 'float64, large', '\203\126\55\228\60\136\0\117\156', 1e300 },
  { 'float64, subnormal', '\203\0\0\0\0\0\0\0\1', 5e-324 },
  { 'float64, zero', '\203\0\0\0\0\0\0\0\0', 0 },
  { 'float32', '\202\63\192\0\0', 1.5 },
  { 'float32, negative', '\202\190\128\0\0', -0.25 },
  { 'fixstr', '\163abc', 'abc' },
  { 'fixstr, empty', '\160', '' },
  { 'str8', '\217\3abc', 'abc' },
  { 'str16', '\218\0\3abc', 'abc' },
  { 'str32', '\219\0\0\0\3abc', 'abc' },
  { 'bin8', '\196\2\0\1', '\0\1' },
  { 'true', '\195', true },
  { 'false', '\194', false },
  { 'fixarray', '\146\1\2', { 1, 2 } },
  { 'array16', '\220\0\2\1\2', { 1, 2 } },
  { 'array32', '\221\0\0\0\1\163abc', { 'abc' } },
  { 'fixmap', '\129\161a\1', { a = 1 } },
  { 'map16', '\222\0\1\161a\145\195', { a = { true } } },
  { 'map32', '\223\0\0\0\1\161a\192', {} },
  { 'a map keyed by a number', '\129\1\161x', { [1] = 'x' } },
}

for _, case in ipairs(VALUES) do
  local read, value = lib.msgpack(case[2])
  check(case[1], read and same(value, case[3]), read and ucl.to_format({ value }, 'json-compact') or value)
end

check('nil', select(1, lib.msgpack('\192')) == true and select(2, lib.msgpack('\192')) == nil)

-- { id, the bytes, what the error says }
local ERRORS = {
  { 'empty', '', 'truncated' },
  { 'fixstr cut short', '\163ab', 'truncated' },
  { 'str8 without its length', '\217', 'truncated' },
  { 'str16 longer than the rest', '\218\1\0abc', 'truncated' },
  { 'float64 cut short', '\203\63\240', 'truncated' },
  { 'uint32 cut short', '\206\0\1', 'truncated' },
  { 'array missing an element', '\146\1', 'truncated' },
  { 'map missing a value', '\129\161a', 'truncated' },
  { 'array32 claiming 4 billion elements', '\221\255\255\255\255\1', 'truncated' },
  { 'unused type 0xc1', '\193\193', 'no such type 0xc1' },
  { 'fixext 1', '\212\1\0', 'no such type 0xd4' },
  { 'ext 8', '\199\1\1\0', 'no such type 0xc7' },
  { 'a map keyed by an array', '\129\144\1', 'neither a string nor a number' },
  { 'a map keyed by nil', '\129\192\1', 'neither a string nor a number' },
  { 'bytes after the value', '\1\2', 'bytes after the value' },
  { 'nested 17 deep', string.rep('\145', 17) .. '\1', 'nested too deep' },
}

for _, case in ipairs(ERRORS) do
  local read, err = lib.msgpack(case[2])
  check(case[1], not read and type(err) == 'string' and err:find(case[3], 1, true) ~= nil, err)
end

local ok16 = lib.msgpack(string.rep('\145', 16) .. '\1')
check('nested 16 deep is read', ok16)

-- What ucl writes (a slim reply as the worker shapes it) reads back the same.
local slim = {
  symbols = { { 'REGCHECK_QR1_ALLOW', 1.0, { 'id12.test', '198.18.0.0/15' } },
              { 'REGCHECK_RATING_HIGH', 0.8667, { 'id12.test', 'ratings=S1:A,M2:A,H1:B' } } },
  milter = { add_headers = { ['X-Regcheck'] = '198.18.0.12 id12.test QR1 pass' },
             remove_headers = { ['X-Regcheck'] = 0 } },
  enforce = { action = 'reject', message = '550 5.7.1 ' .. string.rep('x', 300) },
  rcpt = true,
  max_age = 3599,
}
local read_back, back = lib.msgpack(ucl.to_format(slim, 'msgpack'))
check('a slim reply written by ucl', read_back and same(back, slim), back)

-- lib.decode reads msgpack with it and keeps its error wording.
local okd, slim_obj = lib.decode(ucl.to_format(slim, 'msgpack'), 'application/msgpack; charset=binary')
check('decode: msgpack', okd and slim_obj.max_age == 3599 and slim_obj.symbols[2][2] == 0.8667, slim_obj)
local okb, err = lib.decode('\163ab', 'application/msgpack')
check('decode: truncated msgpack', not okb and err == 'undecodable msgpack reply: truncated', err)
check('decode: a msgpack array', not lib.decode('\145\1', 'application/msgpack'))

print(string.format('%d passed, %d failed', passed, failed))
if failed > 0 then os.exit(1) end

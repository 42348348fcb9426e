-- Unit tests of the plugin's slim-reply and result-cache helpers, run by `rspamadm lua`
-- (tests/test_plugin_cache.py).
-- Usage: rspamadm lua -a /path/to/lua_shim/regcheck.lua tests/lua/test_cache.lua
-- Prints one line per failure and a last line "N passed, M failed".

REGCHECK_UNIT_TEST = true
local lib = dofile(arg[1])

local passed, failed = 0, 0

local function check(name, cond, detail)
  if cond then
    passed = passed + 1
  else
    failed = failed + 1
    print('FAIL ' .. name .. ': ' .. (detail ~= nil and tostring(detail) or ''))
  end
end

local score = { symbol_prefix = 'REGCHECK', mode = 'score' }
local enforce = { symbol_prefix = 'REGCHECK', mode = 'enforce' }

-- the slim form: sorted symbols, options as strings, max-age kept
local slim = {
  symbols = { { 'REGCHECK_RATING_LOW', 0.5, { 'x.example', 42 } }, { 'REGCHECK_QR1_FAIL', 1.0, {} } },
  milter = { add_headers = { ['X-Regcheck'] = 'a' } },
  enforce = { action = 'reject', message = '550 5.7.1 no' },
  rcpt = true,
  max_age = 299.7,
}
local ok, e = lib.prepare(slim, score)
check('slim: prepared', ok, e)
check('slim: sorted', e.symbols[1].name == 'REGCHECK_QR1_FAIL' and e.symbols[2].name == 'REGCHECK_RATING_LOW')
check('slim: weight', e.symbols[2].weight == 0.5)
check('slim: options as strings', e.symbols[2].options[2] == '42')
check('slim: milter', e.milter.add_headers['X-Regcheck'] == 'a')
check('slim: max-age in whole seconds', e.max_age == 299, e.max_age)
check('slim: score mode sets no action', e.action == nil)
check('slim: not resting on the PRA', e.pra == false)
check('slim: resting on the recipients', e.rcpt == true)
ok, e = lib.prepare({ symbols = {}, pra = true, max_age = 3 }, score)
check('slim: resting on the PRA', ok and e.pra == true)
ok, e = lib.prepare(slim, enforce)
check('slim: enforce applies the worker\'s decision', ok and e.action == 'reject' and e.message == '550 5.7.1 no'
  and e.max_age == 299 and e.error == nil, e.message)
ok, e = lib.prepare({ symbols = {}, enforce = { action = 'add header', message = 'x' }, max_age = 5 }, enforce)
check('slim: add header gives no SMTP text', ok and e.action == 'add header' and e.message == nil, e.message)
ok, e = lib.prepare({ symbols = {}, enforce = { action = 'no action' }, max_age = 5 }, enforce)
check('slim: no action sets no pre-result', ok and e.action == nil and e.max_age == 5, e.action)
ok, e = lib.prepare({ symbols = { { 'REGCHECK_NO_RECORD', 1.0, {} } }, verdict = { action = 'REJECT' }, max_age = 5 },
    enforce)
check('slim: no decision is an error, kept nowhere', ok and e.error and e.action == nil and e.max_age == 0
  and #e.symbols == 1, e.error)
ok, e = lib.prepare({ symbols = {}, enforce = { action = 'discard' }, max_age = 5 }, enforce)
check('slim: an unknown action is an error', ok and e.error and e.max_age == 0, e.error)
ok, e = lib.prepare({ symbols = {}, max_age = 5 }, score)
check('slim: score mode needs no decision', ok and e.error == nil and e.max_age == 5, e.error)
ok, e = lib.prepare({ symbols = {}, regcheck = { enforce = { action = 'soft reject', message = '451 x' } } }, enforce)
check('full: the decision from regcheck.enforce', ok and e.action == 'soft reject' and e.message == '451 x', e.action)
ok, e = lib.prepare({ symbols = { { 'bad', 1, {} } }, max_age = 1 }, score)
check('slim: refuses a foreign name', not ok, e)
ok, e = lib.prepare({ max_age = 1 }, score)
check('slim: refuses a reply without symbols', not ok, e)
ok, e = lib.prepare({ symbols = { { 'REGCHECK_QR1_FAIL', 1.0, {} } }, max_age = -3 }, score)
check('slim: a negative max-age is none', ok and e.max_age == 0, e.max_age)
ok, e = lib.prepare({ symbols = { { 'REGCHECK_QR1_FAIL', 1.0, {} } }, max_age = 9 },
    { symbol_prefix = 'RC', mode = 'score' }, {})
check('slim: renamed', ok and e.symbols[1].name == 'RC_QR1_FAIL')
-- the full form carries no max-age: nothing to cache
ok, e = lib.prepare({ symbols = { REGCHECK_QR1_FAIL = { options = { 'a' } } } }, score)
check('full: prepared without max-age', ok and e.max_age == 0 and e.symbols[1].options[1] == 'a')

-- cache keys: every input apart, a missing value apart from an empty one
local env = { ip = '192.0.2.1', helo = 'mx.a.example', from = 'x@a.example', user = nil, dkim = { 'a.example' } }
local base = lib.cache_key(env, 'From:x', nil)
local function with(field, value)
  local copy = {}
  for k, v in pairs(env) do copy[k] = v end
  copy[field] = value
  return lib.cache_key(copy, 'From:x', nil)
end
check('key: stable', base == lib.cache_key(env, 'From:x', nil))
check('key: ip', with('ip', '192.0.2.2') ~= base)
check('key: helo', with('helo', 'mx.b.example') ~= base)
check('key: mail from', with('from', 'y@a.example') ~= base)
check('key: null sender is not a missing one', with('from', '') ~= with('from', nil))
check('key: empty helo is a missing one (the worker reads both as none)', with('helo', '') == with('helo', nil))
check('key: user', with('user', 'alice') ~= base)
check('key: dkim domains', with('dkim', { 'a.example', 'b.example' }) ~= base)
check('key: headers', lib.cache_key(env, 'From:y', nil) ~= base)
check('key: no header block', lib.cache_key(env, nil, nil) ~= base)
check('key: no Sender or From field is not the session key',
  lib.cache_key(env, '', nil) ~= lib.cache_key(env, nil, nil))
check('key: none when the PRA cannot be keyed', lib.cache_key(env, false, nil) == nil)
check('key: no field runs into the next', lib.cache_key({ ip = 'a', helo = 'b:c' }, nil, nil)
    ~= lib.cache_key({ ip = 'a:b', helo = 'c' }, nil, nil))
-- the recipients' part: local parts only, case and order aside; an empty list is not the session key
local ann = lib.rcpt_material({ 'ann@x.test', 'Bob@y.test' })
check('rcpt: order and case do not count', ann == lib.rcpt_material({ 'bob@z.test', 'ANN@x.test' }), ann)
check('rcpt: a protected local part is another key', ann ~= lib.rcpt_material({ 'ann@x.test', 'postmaster@x.test' }))
check('rcpt: a bare postmaster', lib.rcpt_material({ 'postmaster' }) == lib.rcpt_material({ 'PostMaster@x.test' }))
check('rcpt: the last @ splits', lib.rcpt_material({ '"a@b"@x.test' }) == lib.rcpt_material({ '"A@B"@y.test' }))
check('rcpt: no local part runs into the next',
  lib.rcpt_material({ 'ab@x', 'c@x' }) ~= lib.rcpt_material({ 'a@x', 'bc@x' }))
check('key: recipients', lib.cache_key(env, nil, ann) ~= lib.cache_key(env, nil, nil)
  and lib.cache_key(env, nil, ann) ~= lib.cache_key(env, nil, lib.rcpt_material({ 'abuse@x.test' })))
check('key: no recipients is not the session key', lib.cache_key(env, nil, '') ~= lib.cache_key(env, nil, nil))
check('key: headers and recipients apart', lib.cache_key(env, '', '1:a') ~= lib.cache_key(env, '1:a', ''))

-- the bounded cache with expiry
local c = lib.cache_new(4)
lib.cache_put(c, 'a', 1, 100)
check('cache: hit', lib.cache_get(c, 'a', 50) == 1)
check('cache: expired', lib.cache_get(c, 'a', 100) == nil)
check('cache: expired is gone', lib.cache_get(c, 'a', 0) == nil)
c = lib.cache_new(4)
for i = 1, 100 do
  lib.cache_put(c, 'k' .. i, i, 1000)
end
local held = 0
for i = 1, 100 do
  if lib.cache_get(c, 'k' .. i, 0) then held = held + 1 end
end
check('cache: bounded', held <= 4 and held >= 2, held)
check('cache: the newest kept', lib.cache_get(c, 'k100', 0) == 100)
c = lib.cache_new(4)
lib.cache_put(c, 'hot', 'h', 1000)
for i = 1, 20 do
  check('cache: a used entry survives ' .. i, lib.cache_get(c, 'hot', 0) == 'h')
  lib.cache_put(c, 'cold' .. i, i, 1000)
end

-- Redis entries round trip; malformed ones are refused
ok, e = lib.prepare(slim, enforce)
local text = lib.encode_entry(e, 12345)
local ok2, back, expires = lib.decode_entry(text, 'REGCHECK')
check('entry: round trip', ok and ok2 and back.pra == false and expires == 12345 and back.symbols[2].options[2] == '42'
  and back.symbols[1].weight == 1 and back.action == 'reject' and back.message == '550 5.7.1 no'
  and back.milter.add_headers['X-Regcheck'] == 'a', text)
check('entry: resting on the recipients', back.rcpt == true)
e.pra, e.rcpt = true, nil
local again = select(2, lib.decode_entry(lib.encode_entry(e, 1), 'REGCHECK'))
check('entry: resting on the PRA', again.pra == true and again.rcpt == false)
check('entry: not a string', not lib.decode_entry(nil, 'REGCHECK'))
check('entry: garbage', not lib.decode_entry('{"s": 1', 'REGCHECK'))
check('entry: no expiry', not lib.decode_entry('{"s": []}', 'REGCHECK'))
check('entry: a foreign symbol', not lib.decode_entry('{"s": [{"name": "OTHER_X"}], "e": 1}', 'REGCHECK'))

print(string.format('%d passed, %d failed', passed, failed))
if failed > 0 then os.exit(1) end

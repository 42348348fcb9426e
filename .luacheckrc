-- luacheck settings for the rspamd plugin and its tests (run from the repository root)
std = "luajit"
max_line_length = 120
globals = { "rspamd_config", "confighelp", "REGCHECK_UNIT_TEST" }
read_globals = { "arg" }

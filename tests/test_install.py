"""`rspamd-regcheck rspamd install|uninstall` against copies of Debian's /etc/rspamd, and a real
rspamd 3.4 started from such a copy scanning a message through the worker."""

from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rspamd_regcheck import _install
from rspamd_regcheck._install import Act, owned_text, plan_install
from rspamd_regcheck.cli import main

from rspamd_procs import HS_CACHE, ROOT, Proc, free_port, rspamc, start_worker, wait_http

STOCK = Path("/etc/rspamd")


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def confdir(tmp_path):
    """A copy of Debian's rspamd configuration (no plugins.d: Debian ships none)."""
    if not (STOCK / "rspamd.conf").is_file():
        pytest.fail("Debian's rspamd is not installed: ./dev test installs it")
    d = tmp_path / "rspamd"
    shutil.copytree(STOCK, d)
    assert not (d / "plugins.d").exists()
    return d


def offline(d: Path) -> None:
    # the stock fuzzy_check resolves rspamd.com at load; this host has no DNS (docs: "configtest BAD")
    (d / "local.d" / "fuzzy_check.conf").write_text("enabled = false;\n")


def install(d: Path, *args: str) -> int:
    return main(["rspamd", "install", "--confdir", str(d), *args])


def uninstall(d: Path, *args: str) -> int:
    return main(["rspamd", "uninstall", "--confdir", str(d), *args])


# -- pure planning ---------------------------------------------------------------------------


def test_fresh_install_plan(confdir):
    acts = [(s.path.relative_to(confdir).as_posix(), s.act) for s in plan_install(confdir)]
    assert acts == [
        ("plugins.d", Act.MKDIR),
        ("plugins.d/regcheck.lua", Act.CREATE),
        ("local.d/regcheck.conf", Act.CREATE),
        ("local.d/regcheck_group.conf", Act.CREATE),
        ("rspamd.conf.local", Act.ADD_INCLUDE),
        ("local.d/groups.conf", Act.ADD_INCLUDE),
    ]


@pytest.mark.parametrize(
    "old,force,expected",
    [
        pytest.param(None, False, Act.CREATE, id="absent"),
        pytest.param("same", False, Act.UNCHANGED, id="same"),
        pytest.param(owned_text("# an older release\n", "#"), False, Act.UPDATE, id="pristine-older"),
        pytest.param("regcheck { servers = 'x'; }\n", False, Act.KEEP, id="admin-file"),
        pytest.param("regcheck { servers = 'x'; }\n", True, Act.REPLACE, id="admin-file-force"),
        pytest.param("edited", False, Act.KEEP, id="edited"),
        pytest.param("edited", True, Act.REPLACE, id="edited-force"),
    ],
)
def test_owned_file_decisions(confdir, old, force, expected):
    target = confdir / "local.d" / "regcheck.conf"
    new = owned_text(_install.settings_body("score", ()), "#")
    if old == "same":
        target.write_text(new)
    elif old == "edited":
        target.write_text(new.replace("timeout = 4s", "timeout = 2s"))
    elif old is not None:
        target.write_text(old)
    step = next(s for s in plan_install(confdir, force=force) if s.path == target)
    assert step.act is expected


def test_every_profile_has_one_servers_line():
    for mode in _install.MODES:
        body = _install.settings_body(mode, ("10.0.0.5:11340", "10.0.0.6:11340"))
        assert body.count('servers = "10.0.0.5:11340,10.0.0.6:11340";') == 1, mode
    assert 'mode = "enforce";' in _install.settings_body("enforce", ())


@pytest.mark.parametrize("server", ["a b", 'x";', "", "{"])
def test_bad_server_is_refused(confdir, server, capsys):
    before = snapshot(confdir)
    assert install(confdir, "--servers", server) == 2
    assert "not a server address" in capsys.readouterr().err
    assert snapshot(confdir) == before


def test_not_a_confdir(tmp_path, capsys):
    assert install(tmp_path) == 2
    assert "rspamd.conf not found" in capsys.readouterr().err


# -- against the copy, with rspamadm -----------------------------------------------------------


def test_install_is_idempotent_and_uninstall_restores(confdir, capsys):
    offline(confdir)
    (confdir / "rspamd.conf.local").write_text("# the admin's own line\n")
    before = snapshot(confdir)
    assert install(confdir, "--servers", "127.0.0.1:11399") == 0
    out = capsys.readouterr().out
    assert "create: plugins.d/regcheck.lua" in out
    assert "rspamadm configtest -s: syntax OK" in out
    lua = (confdir / "plugins.d" / "regcheck.lua").read_text()
    assert lua.split("\n", 1)[1] == (ROOT / "lua_shim" / "regcheck.lua").read_text()
    assert 'servers = "127.0.0.1:11399";' in (confdir / "local.d" / "regcheck.conf").read_text()
    assert (confdir / "rspamd.conf.local").read_text().startswith("# the admin's own line\n#")
    dump = subprocess.run(
        ["rspamadm", f"--var=CONFDIR={confdir}", f"--var=LOCAL_CONFDIR={confdir}", "configdump", "-m",
         "-c", str(confdir / "rspamd.conf")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    enabled = next(x for x in dump.stdout.splitlines() if x.startswith("Modules enabled:"))
    assert "regcheck" in [m.strip() for m in enabled.split(":", 1)[1].split(",")]

    installed = snapshot(confdir)
    assert install(confdir, "--servers", "127.0.0.1:11399") == 0
    out = capsys.readouterr().out
    assert "create" not in out and "add include" not in out and out.count("unchanged:") == 5
    assert snapshot(confdir) == installed

    assert uninstall(confdir) == 0
    assert snapshot(confdir) == before
    assert not (confdir / "plugins.d").exists()


def test_edited_settings_survive_an_upgrade_and_uninstall(confdir, capsys):
    offline(confdir)
    assert install(confdir) == 0
    settings = confdir / "local.d" / "regcheck.conf"
    edited = settings.read_text().replace("#secret = ", "secret = ")
    settings.write_text(edited)
    assert install(confdir, "--mode", "enforce") == 0
    assert "keep edited file (--force replaces it): local.d/regcheck.conf" in capsys.readouterr().out
    assert settings.read_text() == edited
    assert uninstall(confdir) == 0
    assert settings.read_text() == edited and not (confdir / "plugins.d" / "regcheck.lua").exists()
    assert install(confdir, "--mode", "enforce", "--force") == 0
    assert 'mode = "enforce";' in settings.read_text()
    assert (confdir / "local.d" / "regcheck.conf.regcheck-old").read_text() == edited


def test_include_after_a_last_line_without_newline(confdir):
    (confdir / "rspamd.conf.local").write_text("options { }")
    step = next(s for s in plan_install(confdir) if s.path.name == "rspamd.conf.local")
    assert step.content is not None and step.content.startswith("options { }\n# added by rspamd-regcheck")


def test_an_update_keeps_mode_and_owner(confdir):
    offline(confdir)
    assert install(confdir) == 0
    settings = confdir / "local.d" / "regcheck.conf"
    assert settings.stat().st_mode & 0o777 == 0o644
    settings.write_text(owned_text("# an older release\n", "#"))  # pristine, so an upgrade replaces it
    os.chown(settings, 0, grp.getgrnam("_rspamd").gr_gid)
    settings.chmod(0o640)
    assert install(confdir) == 0
    assert "regcheck {" in settings.read_text()
    assert settings.stat().st_mode & 0o777 == 0o640
    assert settings.stat().st_gid == grp.getgrnam("_rspamd").gr_gid


def test_a_later_install_keeps_mode_and_servers(confdir, capsys):
    offline(confdir)
    assert install(confdir, "--mode", "enforce", "--servers", "10.0.0.5:11340", "10.0.0.6:11340") == 0
    settings = (confdir / "local.d" / "regcheck.conf").read_text()
    assert install(confdir) == 0  # an upgrade run without the options
    assert "unchanged: local.d/regcheck.conf" in capsys.readouterr().out
    assert (confdir / "local.d" / "regcheck.conf").read_text() == settings
    assert install(confdir, "--mode", "score") == 0  # an option given wins
    text = (confdir / "local.d" / "regcheck.conf").read_text()
    assert 'mode = "score";' in text and 'servers = "10.0.0.5:11340,10.0.0.6:11340";' in text


def test_dry_run_writes_nothing(confdir, capsys):
    before = snapshot(confdir)
    assert install(confdir, "--dry-run") == 0
    assert "would create: plugins.d/regcheck.lua" in capsys.readouterr().out
    assert snapshot(confdir) == before


def test_configtest_bad_offline_names_fuzzy_check(confdir, capsys):
    """The untouched Debian config fails `configtest -s` without DNS: install says why."""
    assert install(confdir) == 1
    out = capsys.readouterr().out
    assert "syntax BAD" in out and "hint: only rspamd's own fuzzy_check failed" in out


def test_configtest_bad_for_a_broken_plugin_has_no_fuzzy_hint(confdir, capsys):
    offline(confdir)
    (confdir / "plugins.d").mkdir()
    (confdir / "plugins.d" / "regcheck.lua").write_text("local x = = 1\n")  # the admin's broken copy
    assert install(confdir) == 1
    out = capsys.readouterr().out
    assert "keep edited file" in out and "syntax BAD" in out and "hint:" not in out


FAKE_RSPAMADM = "#!/bin/sh\necho 'syntax {verdict}'\necho 'a warning on stderr' >&2\nexit {status}\n"


@pytest.mark.parametrize(
    "verdict,status,ok",
    [
        pytest.param("OK", 0, True, id="ok-with-a-warning"),
        pytest.param("BAD", 1, False, id="bad"),
        pytest.param("OK", 1, False, id="ok-text-failed-status"),
    ],
)
def test_configtest_judges_status_and_stdout(tmp_path, verdict, status, ok):
    """What no real rspamadm 3.4 does on demand: say OK and warn on stderr (once read as BAD)."""
    fake = tmp_path / "rspamadm"
    fake.write_text(FAKE_RSPAMADM.format(verdict=verdict, status=status))
    fake.chmod(0o755)
    result = _install.configtest(tmp_path, rspamadm=str(fake))
    assert result is not None and result.ok is ok and "a warning on stderr" in result.output


FUZZY_LINE = "cannot read servers definition for fuzzy_check"  # as rspamd 3.4 says it offline


@pytest.mark.parametrize(
    "lines,hint",
    [
        pytest.param([FUZZY_LINE, "1 error found"], True, id="fuzzy-only"),
        pytest.param(
            [FUZZY_LINE, "regcheck: invalid settings: field mode must be one of", "2 errors found"],
            False, id="fuzzy-and-ours",
        ),
        pytest.param(["regcheck: invalid settings: field mode", "1 error found"], False, id="ours-only"),
    ],
)
def test_configtest_blames_fuzzy_check_only_when_nothing_of_ours_failed(tmp_path, lines, hint):
    fake = tmp_path / "rspamadm"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{x}'\n" for x in lines) + "echo 'syntax BAD'\nexit 1\n")
    fake.chmod(0o755)
    result = _install.configtest(tmp_path, rspamadm=str(fake))
    assert result is not None and not result.ok
    assert bool(result.hint) is hint, result


# -- the wheel carries the plugin and the rules -------------------------------------------------


def test_wheel_carries_plugin_and_rules(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("rspamd_regcheck-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for repo_path in [ROOT / "lua_shim" / "regcheck.lua", *sorted((ROOT / "rules").glob("*.conf"))]:
            packaged = f"rspamd_regcheck/{repo_path.parent.name}/{repo_path.name}"
            assert packaged in names
            assert z.read(packaged) == repo_path.read_bytes()
    # installed from the wheel (no source tree beside it), the command finds them in the package
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    probe = "from rspamd_regcheck._install import packaged; print(packaged('lua_shim', 'regcheck.lua'))"
    found = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, PYTHONPATH=str(target)), cwd=tmp_path,
                           capture_output=True, text=True, check=True, timeout=60).stdout.strip()  # fmt: skip
    assert found == str(target / "rspamd_regcheck" / "lua_shim" / "regcheck.lua")


# -- a real rspamd from the installed copy ---------------------------------------------------------


def test_real_rspamd_from_the_installed_copy(knot, confdir, tmp_path, capsys):
    worker_port = free_port()
    worker = start_worker(
        tmp_path,
        "worker",
        f'[registry]\nzones = ["id.regcheck.test"]\n[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n',
        worker_port,
    )
    offline(confdir)
    assert install(confdir, "--servers", f"127.0.0.1:{worker_port}") == 0, capsys.readouterr().out
    port, ctl = free_port(), free_port()
    (confdir / "override.d" / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
    (confdir / "override.d" / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{ctl}";\ncount = 1;\n')
    (confdir / "override.d" / "worker-proxy.inc").write_text("enabled = false;\n")
    (confdir / "override.d" / "logging.inc").write_text(f'type = "file";\nfilename = "{confdir}/rspamd.log";\n')
    HS_CACHE.mkdir(parents=True, exist_ok=True)
    (confdir / "local.d" / "options.inc").write_text(
        f'hs_cache_dir = "{HS_CACHE}";\ndns {{ nameserver = ["127.0.0.1:{knot.port}"]; timeout = 1s; }}\n'
    )
    for sub in ("db", "run"):
        (confdir / sub).mkdir()
    # docs/scoring.md's composites, as an admin would paste them
    doc = (ROOT / "docs" / "scoring.md").read_text()
    composites = re.search(r"<<'EOF2'\n(.*?)\nEOF2\n", doc, re.DOTALL)
    assert composites is not None
    (confdir / "local.d" / "composites.conf").write_text(composites.group(1) + "\n")
    rspamd = Proc(
        [shutil.which("rspamd") or "rspamd", "-f", "-i", "-c", str(confdir / "rspamd.conf"),
         f"--var=CONFDIR={confdir}", f"--var=LOCAL_CONFDIR={confdir}", f"--var=DBDIR={confdir}/db",
         f"--var=RUNDIR={confdir}/run", f"--var=LOGDIR={confdir}"],
        tmp_path / "rspamd.out",
    )  # fmt: skip
    try:
        wait_http(port, rspamd.proc, tmp_path / "rspamd.out", 180)
        eml = tmp_path / "m.eml"
        eml.write_bytes(b"From: a@heaven.net\r\nTo: b@receiver.test\r\nSubject: hi\r\n\r\nhello\r\n")
        result, _ = rspamc(port, eml, "-i", "208.20.133.17", "--helo", "mailout17.heaven.net")
        symbols = result["symbols"]
        assert symbols["REGCHECK_QR1_ALLOW"]["score"] == -2.0
        assert "REGCHECK_RATING_HIGH" in symbols and "REGCHECK_FAIL" not in symbols
        assert any(n.startswith(("R_", "MIME_", "HFILTER_")) for n in symbols), "the stock modules ran too"
        # a bad HELO is counted once: rspamd's hfilter keeps its score, ours goes to 0
        result, _ = rspamc(port, eml, "-i", "208.20.133.17", "--helo", "JUPITER")
        symbols = result["symbols"]
        assert symbols["REGCHECK_BAD_HELO"]["score"] == 0, " ".join(f"{n}={v['score']}" for n, v in symbols.items())
        assert any(n.startswith("HFILTER_HELO_") and v["score"] > 0 for n, v in symbols.items()), symbols
        # an SPF fail seen by both counts once: ours keeps its score, R_SPF_FAIL goes
        result, _ = rspamc(port, eml, "-i", "192.0.2.99", "--helo", "mx1.wayforward.net", "-F", "x@mx1.wayforward.net")
        symbols = result["symbols"]
        assert symbols["REGCHECK_SPF_FAIL"]["score"] == 4.0, symbols
        assert "R_SPF_FAIL" not in symbols and "REGCHECK_SPF_FAIL_ONCE" in symbols, sorted(symbols)
    finally:
        rspamd.stop()
        worker.stop()

"""``rspamd-regcheck rspamd install|uninstall``: the plugin and rules where rspamd 3.4 loads them.

What goes where (Debian's rspamd 3.4 keeps CONFDIR and LOCAL_CONFDIR both in
``/etc/rspamd``; ``docs/install-and-operate.md`` explains each part)::

    plugins.d/regcheck.lua        the plugin; modules.try_path loads this folder
    local.d/regcheck.conf         its settings; the regcheck { } section enables it
    local.d/regcheck_group.conf   the symbol group: scores and descriptions
    rspamd.conf.local             gets an .include of local.d/regcheck.conf
    local.d/groups.conf           gets an .include of local.d/regcheck_group.conf

The three files of our own start with a line that carries a checksum of the
rest, the way dpkg remembers a conffile's md5sum: a file whose rest still
matches was not edited, so an upgrade may replace it and ``uninstall`` may
remove it.  A file without that line, or edited since, is the admin's: it is
kept unless ``--force`` (which saves the old copy beside it first).  The two
shared files only ever gain or lose our two lines.

Planning is pure (`plan_install`, `plan_uninstall` read files and return
`Step` values); `apply` writes; `configtest` runs ``rspamadm configtest -s``.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import __version__

DEBIAN_CONFDIR = Path("/etc/rspamd")
MODES = ("score", "enforce")
PLUGIN = Path("plugins.d") / "regcheck.lua"
SETTINGS = Path("local.d") / "regcheck.conf"
GROUP = Path("local.d") / "regcheck_group.conf"
MAIN_LOCAL = Path("rspamd.conf.local")
GROUPS_LOCAL = Path("local.d") / "groups.conf"
BACKUP_SUFFIX = ".regcheck-old"
MARK = "added by rspamd-regcheck; 'rspamd-regcheck rspamd uninstall' removes it"
CONFIGTEST_TIMEOUT = 120.0  # seconds; a stock config tests in about one

_PACKAGE = Path(__file__).parent
_HEADER = re.compile(r"^(?:#|--) rspamd-regcheck (\S+), checksum ([0-9a-f]{32}) .*\n")
_SERVERS = re.compile(r'^(\s*servers = )".*";$', re.MULTILINE)


def packaged(kind: str, name: str) -> Path:
    """The path of a packaged file: *kind* is ``lua_shim`` or ``rules``.

    A wheel carries them inside the package (``pyproject.toml`` maps the
    repository's ``lua_shim/`` and ``rules/`` there); a source checkout, which
    an editable install points at, has them beside the package.
    """
    for base in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"{kind}/{name} is missing from this installation of rspamd-regcheck")


class Act(enum.Enum):
    """What a step does to one path."""

    MKDIR = "create directory"
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace edited file (old copy saved as {backup})"
    KEEP = "keep edited file (--force replaces it)"
    UNCHANGED = "unchanged"
    ADD_INCLUDE = "add include of {target}"
    DEL_INCLUDE = "remove include of {target}"
    REMOVE = "remove"
    REMOVE_FORCED = "remove edited file (old copy saved as {backup})"
    RMDIR = "remove empty directory"


@dataclass(frozen=True)
class Step:
    """One change (or a reason for none) to one path under the confdir."""

    path: Path
    act: Act
    content: str | None = None  # the text to write (CREATE, UPDATE, REPLACE, includes)
    target: str = ""  # the included file (ADD_INCLUDE, DEL_INCLUDE)

    @property
    def changes(self) -> bool:
        return self.act not in (Act.UNCHANGED, Act.KEEP)

    def describe(self, confdir: Path) -> str:
        what = self.act.value.format(backup=self.path.name + BACKUP_SUFFIX, target=self.target)
        return f"{what}: {self.path.relative_to(confdir)}"


def owned_text(body: str, comment: str) -> str:
    """*body* under our first line: version and the checksum of *body*."""
    digest = hashlib.sha256(body.encode()).hexdigest()[:32]
    return f"{comment} rspamd-regcheck {__version__}, checksum {digest} (edited: upgrades keep it)\n{body}"


def is_pristine(text: str) -> bool:
    """True when *text* is a file we wrote and nobody edited since."""
    m = _HEADER.match(text)
    return m is not None and hashlib.sha256(text[m.end() :].encode()).hexdigest()[:32] == m.group(2)


def settings_body(mode: str, servers: Sequence[str]) -> str:
    """``local.d/regcheck.conf`` for *mode*, with *servers* when given.

    :raises ValueError: for an unknown mode or a server with a quote or space in it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    name = "regcheck.conf" if mode == "score" else "regcheck_enforce.conf"
    body = packaged("rules", name).read_text()
    if servers:
        bad = [s for s in servers if not s or re.search(r'[\s";{}]', s)]
        if bad:
            raise ValueError(f"not a server address: {bad[0]!r}")
        body, n = _SERVERS.subn(lambda m: f'{m.group(1)}"{",".join(servers)}";', body, count=1)
        if n != 1:
            raise AssertionError(f"rules/{name} has no servers line")  # tests/test_install.py checks both
    return body


def _include(target: Path) -> str:
    return f'.include "$LOCAL_CONFDIR/{target.as_posix()}"'


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _own_file(confdir: Path, rel: Path, body: str, comment: str, force: bool) -> Step:
    path = confdir / rel
    new = owned_text(body, comment)
    old = _read(path)
    if old is None:
        return Step(path, Act.CREATE, new)
    if old == new:
        return Step(path, Act.UNCHANGED)
    if is_pristine(old):
        return Step(path, Act.UPDATE, new)
    return Step(path, Act.REPLACE, new) if force else Step(path, Act.KEEP)


def _add_include(confdir: Path, rel: Path, target: Path) -> Step:
    path = confdir / rel
    line = _include(target)
    old = _read(path) or ""
    if line in (x.strip() for x in old.splitlines()):
        return Step(path, Act.UNCHANGED, target=target.as_posix())
    sep = "" if not old or old.endswith("\n") else "\n"
    return Step(path, Act.ADD_INCLUDE, f"{old}{sep}# {MARK}\n{line}\n", target.as_posix())


def previous_settings(confdir: Path) -> tuple[str | None, tuple[str, ...]]:
    """The mode and servers in *confdir*'s ``local.d/regcheck.conf``, as far as it says."""
    text = _read(confdir / SETTINGS) or ""
    mode = re.search(r'^\s*mode = "(score|enforce)";', text, re.MULTILINE)
    servers = re.search(r'^\s*servers = "([^"]*)";', text, re.MULTILINE)
    return (
        mode.group(1) if mode else None,
        tuple(x.strip() for x in servers.group(1).split(",") if x.strip()) if servers else (),
    )


def plan_install(
    confdir: Path, mode: str | None = None, servers: Sequence[str] = (), force: bool = False
) -> list[Step]:
    """The steps that install the plugin and rules into *confdir*; nothing is written.

    Without *mode* or *servers*, those of the installed settings are kept (as
    Debian keeps the answers given at the first install), else the defaults.

    :raises ValueError: for a bad mode or server (see `settings_body`).
    :raises FileNotFoundError: when *confdir* has no ``rspamd.conf``.
    """
    if not (confdir / "rspamd.conf").is_file():
        raise FileNotFoundError(f"{confdir}/rspamd.conf not found: is this rspamd's configuration directory?")
    old_mode, old_servers = previous_settings(confdir)
    mode = mode or old_mode or "score"
    servers = servers or old_servers
    steps = [Step(confdir / d, Act.MKDIR) for d in ("plugins.d", "local.d") if not (confdir / d).is_dir()]
    steps += [
        _own_file(confdir, PLUGIN, packaged("lua_shim", "regcheck.lua").read_text(), "--", force),
        _own_file(confdir, SETTINGS, settings_body(mode, servers), "#", force),
        _own_file(confdir, GROUP, packaged("rules", "regcheck_group.conf").read_text(), "#", force),
        _add_include(confdir, MAIN_LOCAL, SETTINGS),
        _add_include(confdir, GROUPS_LOCAL, GROUP),
    ]
    return steps


def _remove_include(confdir: Path, rel: Path, target: Path) -> Step | None:
    path = confdir / rel
    old = _read(path)
    line = _include(target)
    if old is None or line not in (x.strip() for x in old.splitlines()):
        return None
    kept = "".join(x for x in old.splitlines(keepends=True) if x.strip() not in (line, f"# {MARK}"))
    # a file left empty was ours alone (Debian ships neither): it goes
    return Step(path, Act.DEL_INCLUDE, kept or None, target.as_posix())


def plan_uninstall(confdir: Path, force: bool = False) -> list[Step]:
    """The steps that undo `plan_install` in *confdir*; edited files stay unless *force*."""
    steps: list[Step] = []
    for rel, target in ((MAIN_LOCAL, SETTINGS), (GROUPS_LOCAL, GROUP)):
        step = _remove_include(confdir, rel, target)
        if step is not None:
            steps.append(step)
    for rel in (PLUGIN, SETTINGS, GROUP):
        text = _read(confdir / rel)
        if text is None:
            continue
        if is_pristine(text):
            steps.append(Step(confdir / rel, Act.REMOVE))
        else:
            steps.append(Step(confdir / rel, Act.REMOVE_FORCED if force else Act.KEEP))
    plugins = confdir / PLUGIN.parent
    removed = {s.path for s in steps if s.act in (Act.REMOVE, Act.REMOVE_FORCED)}
    if confdir / PLUGIN in removed and all(p in removed for p in plugins.iterdir()):
        steps.append(Step(plugins, Act.RMDIR))
    return steps


def _write(path: Path, text: str) -> None:
    """Replace *path* atomically.

    A new file gets mode 0644, as Debian ships rspamd's own; a replaced one
    keeps its mode and owner (an admin may have made it 0640 root:_rspamd).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        try:
            old = path.stat()
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        else:
            os.chmod(tmp, old.st_mode & 0o7777)
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply(steps: Sequence[Step]) -> None:
    """Carry out *steps* in order.  :raises OSError: when a path cannot be written."""
    for step in steps:
        if step.act is Act.MKDIR:
            step.path.mkdir(mode=0o755)
        elif step.act in (Act.REPLACE, Act.REMOVE_FORCED):
            shutil.copy2(step.path, step.path.with_name(step.path.name + BACKUP_SUFFIX))
            if step.content is None:
                step.path.unlink()
            else:
                _write(step.path, step.content)
        elif step.act is Act.REMOVE or (step.act is Act.DEL_INCLUDE and step.content is None):
            step.path.unlink()
        elif step.act is Act.RMDIR:
            step.path.rmdir()
        elif step.content is not None and step.changes:
            _write(step.path, step.content)


@dataclass(frozen=True)
class ConfigTest:
    """What ``rspamadm configtest -s`` said."""

    ok: bool
    output: str
    hint: str = ""


# rspamd's stock fuzzy_check resolves its servers when the config loads; offline that fails.
_FUZZY = re.compile(r"address resolution for fuzzy\S* failed|cannot read servers definition")


def configtest(confdir: Path, rspamadm: str = "rspamadm") -> ConfigTest | None:
    """Run ``rspamadm configtest -s`` on *confdir*; None when rspamadm is not installed.

    ``-s`` (strict) is what makes a plugin that fails to load an error; the
    variables point CONFDIR and LOCAL_CONFDIR at *confdir*, so a copy of
    ``/etc/rspamd`` is tested as itself.
    """
    exe = shutil.which(rspamadm)
    if exe is None:
        return None
    d = confdir.resolve()
    proc = subprocess.run(
        [exe, f"--var=CONFDIR={d}", f"--var=LOCAL_CONFDIR={d}", "configtest", "-s", "-c", str(d / "rspamd.conf")],
        capture_output=True,
        text=True,
        timeout=CONFIGTEST_TIMEOUT,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    # the exit status and the verdict line on stdout; a warning on stderr does not make it BAD
    ok = proc.returncode == 0 and "syntax OK" in proc.stdout.splitlines()
    hint = ""
    errors = [x for x in output.splitlines() if "error" in x or "failed" in x or "cannot" in x]
    # only when nothing of ours is named: the plugin's own complaints ("regcheck: invalid settings")
    # carry none of the words above, and a fuzzy_check failure beside them is not the cause
    ours = "regcheck" in output.lower()
    only_fuzzy = all(_FUZZY.search(x) or re.fullmatch(r"\d+ errors? found", x) for x in errors)
    if not ok and not ours and errors and only_fuzzy:
        hint = (
            "only rspamd's own fuzzy_check failed: it resolves fuzzy1.rspamd.com when the config loads, "
            "which fails without DNS; give this host a resolver, or disable the module with "
            f"'enabled = false;' in {d}/local.d/fuzzy_check.conf (docs/install-and-operate.md, 'configtest BAD')"
        )
    return ConfigTest(ok, output, hint)


def run(confdir: Path, uninstall: bool, mode: str | None, servers: Sequence[str], force: bool, dry_run: bool) -> int:
    """The ``rspamd install`` / ``rspamd uninstall`` commands; prints what changed, returns the exit status.

    0: done and ``configtest`` said OK (or rspamadm is not installed);
    1: ``configtest`` said BAD; 2: nothing done (bad option, not a confdir, a write failed).
    """
    try:
        steps = plan_uninstall(confdir, force) if uninstall else plan_install(confdir, mode, servers, force)
    except (ValueError, OSError) as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return 2
    verb = "uninstall" if uninstall else "install"
    print(f"rspamd {verb}{' (dry run: nothing written)' if dry_run else ''}: {confdir}")
    for step in steps:
        print(f"  {'would ' if dry_run and step.changes else ''}{step.describe(confdir)}")
    if not steps:
        print("  nothing to remove")
    if any(s.act is Act.KEEP for s in steps):
        print("  an edited file was kept; compare it with the packaged one, or give --force")
    if dry_run:
        return 0
    try:
        apply(steps)
    except OSError as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return 2
    result = configtest(confdir)
    if result is None:
        print("rspamadm not found: run 'rspamadm configtest -s' where rspamd is installed")
        return 0
    print("rspamadm configtest -s: " + ("syntax OK" if result.ok else "syntax BAD"))
    if not result.ok:
        print("  " + result.output.replace("\n", "\n  "))
        if result.hint:
            print(f"hint: {result.hint}")
        if not uninstall:
            print("the changes above stay in place; 'rspamd-regcheck rspamd uninstall' takes them out")
        return 1
    if not uninstall:
        print("next: start the worker (rspamd-regcheck serve), then 'systemctl reload rspamd'")
    return 0

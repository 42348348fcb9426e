"""docs/configuration.md's worker block names every key the worker accepts.

The keys are read from rspamd_regcheck/config.py itself (the key tuples given to ``_table`` and
``_only``), so a key added to the code without a line in the reference block fails here.
test_docs.py already runs ``config check`` on the block: together they keep it true both ways.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "rspamd_regcheck" / "config.py"
REFERENCE = ROOT / "docs" / "configuration.md"

# Tables documented on a page of their own instead of the reference block: table -> that page.
# A table listed here that config.py does not (yet) accept is ignored; once it does, its keys
# must appear on that page.
OWN_PAGE = {
    "policy_server": "docs/postfix.md",  # the Postfix policy service (from the postfix branch)
}
# ``_only`` calls outside config_from_mapping check a nested table: the function -> that table.
# A new ``_only`` call elsewhere fails the test until it is named here.
NESTED = {
    "_services": "services.*",
    "_answering": "services.*.vouchers",
    "_dnsbl": "prescreen.zones",
    "_policy_server": "policy_server",
}


def accepted_keys() -> dict[str, tuple[str, ...]]:
    """Table (dotted, ``services.*`` for any service; ``""`` for the top level) -> its keys."""
    tree = ast.parse(CONFIG.read_text())
    assigns = (n for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Tuple))
    consts = {t.id: n.value for n in assigns for t in n.targets if isinstance(t, ast.Name)}  # e.g. sections

    def literal(node: ast.expr) -> tuple[str, ...]:
        return tuple(ast.literal_eval(consts[node.id] if isinstance(node, ast.Name) else node))

    found: dict[str, tuple[str, ...]] = {}
    for func in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        for call in (n for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
            if call.func.id == "_table":
                found[ast.literal_eval(call.args[1])] = literal(call.args[2])
            elif call.func.id == "_only" and func.name != "_table":
                top = func.name == "config_from_mapping"
                assert top or func.name in NESTED, f"config.py: _only in {func.name}: add its table to NESTED"
                found["" if top else NESTED[func.name]] = literal(call.args[2])
    return found


def reference_block() -> str:
    text = REFERENCE.read_text()
    section = text[text.index("## The worker") : text.index("## The plugin")]
    return re.search(r"```toml\n(.*?)```", section, re.DOTALL).group(1)


def sections(block: str) -> dict[str, str]:
    """Table -> the block's lines under its headers (commented-out keys and headers count)."""
    out: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        header = re.match(r"\s*(?:#\s*)?\[\[?([\w.*-]+)\]\]?", line)
        if header:
            parts = header.group(1).split(".")
            if parts[0] == "services" and len(parts) > 1:
                parts[1] = "*"
            current = ".".join(parts)
            out.setdefault(current, "")
        out[current] = out.get(current, "") + line + "\n"
    return out


def documented(table: str, key: str, where: dict[str, str]) -> bool:
    """Is *key* of *table* shown: as ``key =`` under the table (or a sub-table, or, for a table
    written inline, under its parent), or as a ``[table.key]`` header?"""
    if f"{table}.{key}" in where or (not table and key in {t.split(".")[0] for t in where}):
        return True
    own = {t: s for t, s in where.items() if t == table or t.startswith(table + ".")}
    text = "".join(own.values()) or where.get(table.rpartition(".")[0], "")
    return re.search(rf"(?:^|[\s{{,#]){re.escape(key)}\s*=", text, re.M) is not None


def test_the_introspection_finds_the_tables():
    """A parse that found nothing would pass everything."""
    keys = accepted_keys()
    assert {"", "server", "dns", "registry", "policy", "services.*", "prescreen.zones"} <= set(keys)
    assert "secret_file" in keys["server"] and "vouchers" in keys["services.*"]


def test_documented_reads_the_block():
    where = sections('[dns]\nport = 53\n# sockets = 64\n[services.A]\nv = [{ domain = "x" }]\n[services.A.codes]\n')
    assert documented("dns", "port", where) and documented("dns", "sockets", where)
    assert documented("services.*", "codes", where) and documented("services.*.vouchers", "domain", where)
    assert documented("", "dns", where)
    assert not documented("dns", "tries", where) and not documented("", "policy", where)


def test_every_accepted_key_is_in_the_reference_block():
    where = sections(reference_block())
    missing = []
    for table, accepted in accepted_keys().items():
        if table.split(".")[0] in OWN_PAGE:
            continue
        keys = tuple(k for k in accepted if k not in OWN_PAGE) if not table else accepted
        missing += [f"{table}.{k}".lstrip(".") for k in keys if not documented(table, k, where)]
    assert not missing, f"docs/configuration.md's worker block lacks: {', '.join(missing)}"


def test_tables_on_their_own_page_are_documented_there():
    keys = accepted_keys()
    for table, page in OWN_PAGE.items():
        if table not in keys:
            continue  # not in this checkout's config.py yet
        text = (ROOT / page).read_text()
        # as TOML (`key = ...`) or named in prose or a table (`key` or `table.key`)
        missing = [k for k in keys[table] if not re.search(rf"\b{re.escape(k)}\s*=|`({table}\.)?{k}`", text)]
        assert not missing, f"{page} lacks [{table}] keys: {', '.join(missing)}"

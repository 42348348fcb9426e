"""The public API: everything in __all__ exists and the private modules stay private."""

from __future__ import annotations

import rspamd_regcheck


def test_all_names_exist():
    for name in rspamd_regcheck.__all__:
        assert hasattr(rspamd_regcheck, name), name


def test_exports_are_public():
    for name in rspamd_regcheck.__all__:
        member = getattr(rspamd_regcheck, name)
        module = getattr(member, "__module__", "rspamd_regcheck")
        assert module.startswith("rspamd_regcheck"), (name, module)

"""`__all__` is the public surface: every name resolves, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import coordinator


def test_every_public_name_resolves_to_a_documented_object() -> None:
    assert coordinator.__all__ == sorted(set(coordinator.__all__))
    for name in coordinator.__all__:
        value = getattr(coordinator, name)
        assert value.__doc__, f"{name} has no docstring"


def test_importing_the_package_loads_no_heavy_module() -> None:
    code = ("import sys, coordinator, coordinator.cli; "
            "print(sorted(m for m in ('anthropic', 'aiohttp', 'openai', 'httpx', 'pydantic', 'rich.table') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

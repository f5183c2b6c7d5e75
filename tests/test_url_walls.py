"""Every named route must have a tenant-wall test (see tests/walls.py).

Walks the URL configuration and the test sources: a route whose name no
`@wall_test(...)` mentions fails here, so a later view cannot forget its wall.
"""

from __future__ import annotations

import ast
from pathlib import Path

from django.urls import URLPattern, URLResolver, get_resolver

# Routes that show no tenant-owned object, with the reason they need no wall test.
NO_TENANT_OBJECTS = {
    "login": "public log-in form",
    "logout": "ends the caller's own session",
    "set_language": "stores a language choice in the caller's own session",
    "healthz": "reports process health only",
    "keepalive": "refreshes the caller's own idle timer",
    "api-schema": "the public OpenAPI description",
    "api-docs": "renders the public OpenAPI description",
    "home": "greets the logged-in user; lists nothing tenant-owned",
}


def route_names(patterns=None, namespace: str = "") -> set[str]:
    names: set[str] = set()
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            names |= route_names(entry.url_patterns, inner)
        elif isinstance(entry, URLPattern) and entry.name:
            names.add(namespace + entry.name)
    return names


def wall_tested_names() -> set[str]:
    names: set[str] = set()
    for path in Path(__file__).parent.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "wall_test":
                names |= {arg.value for arg in node.args if isinstance(arg, ast.Constant)}
    return names


def test_every_named_route_has_a_tenant_wall_test():
    tested = wall_tested_names()
    untested = sorted(
        name
        for name in route_names()
        if name not in NO_TENANT_OBJECTS
        and name not in tested
        and not (name.startswith("admin:") and "admin" in tested)  # the admin is walled as a whole
    )
    assert not untested, f"routes without a @wall_test: {untested}"


def test_walker_sees_routes_and_marks():
    # Guard against a walker that passes because it sees nothing.
    assert {"login", "admin:index", "api-schema"} <= route_names()
    assert "admin" in wall_tested_names()

"""Marks a test as the tenant-wall test of one or more URL names.

`tests/test_url_walls.py` walks the URL configuration and fails for every
named route that no test marks with `@wall_test("route-name")`, so a new view
cannot ship without proof that tenant A gets 404 for tenant B's objects.
"""

from __future__ import annotations

from collections.abc import Callable


def wall_test(*url_names: str) -> Callable:
    def mark(test: Callable) -> Callable:
        test.wall_url_names = url_names
        return test

    return mark

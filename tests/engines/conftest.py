"""Engine subclasses of the contract suites skip the tests named in their ``skips`` at
collection (before their class's server starts), each with its reason."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cls = getattr(item, "cls", None)
        reason = (getattr(cls, "skips", None) or {}).get(getattr(item, "originalname", item.name))
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"{cls.__name__}: {reason}"))

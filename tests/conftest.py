"""Loads every fixture module under tests/support/ so test files share real-server fixtures."""

import pkgutil
from pathlib import Path

pytest_plugins = sorted(
    f"tests.support.{m.name}"
    for m in pkgutil.iter_modules([str(Path(__file__).parent / "support")])
)

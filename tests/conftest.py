"""Fixtures shared by the pytest suites under tests/ (eg, spark)."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def launcher() -> str:
    """The kernel-launcher binary under test. Missing => FAIL, never skip."""
    value = os.environ.get("KERNEL_LAUNCHER")
    if not value:
        pytest.fail(
            "KERNEL_LAUNCHER is not set. Build it (cargo build -p launcher) and run with "
            "KERNEL_LAUNCHER=$PWD/target/debug/kernel-launcher",
            pytrace=False,
        )
    path = Path(value).resolve()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"KERNEL_LAUNCHER={value} does not exist or is not executable", pytrace=False)
    return str(path)

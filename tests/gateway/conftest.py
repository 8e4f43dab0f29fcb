"""Fixtures for tests/gateway (helpers and the layout of peers: support/gateway.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support.gateway import KL_ENV, REPO, SETUP, Peers, require_exe


@pytest.fixture(scope="session")
def peers() -> Peers:
    """gateway-lite, kernel-launcher and ipykernel (what every test here needs)."""
    return Peers(
        gateway=require_exe(
            os.environ.get("GATEWAY_LITE") or str(REPO / "target/debug/gateway-lite"),
            "gateway-lite",
            "run `cargo build -p gateway-lite` or set GATEWAY_LITE",
        ),
        launcher=require_exe(
            os.environ.get("KERNEL_LAUNCHER") or str(REPO / "target/debug/kernel-launcher"),
            "kernel-launcher",
            "run `cargo build -p launcher` or set KERNEL_LAUNCHER",
        ),
        py_kernel=require_exe(KL_ENV.get("KL_PY_KERNEL"), "KL_PY_KERNEL (python with ipykernel<7)", SETUP),
        this_venv_bin=Path(sys.executable).parent,
    )

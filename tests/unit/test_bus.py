"""The bus device's bind policy."""

from __future__ import annotations

import pytest

from zsvc.daemon.bus import BindError, loopback_bind


def test_bus_binds_only_on_loopback() -> None:
    """Wildcards bind 127.0.0.1; loopback stays; any other TCP address is refused."""
    assert loopback_bind("tcp://*:5557") == "tcp://127.0.0.1:5557"
    assert loopback_bind("tcp://0.0.0.0:5557") == "tcp://127.0.0.1:5557"
    assert loopback_bind("tcp://[::]:5557") == "tcp://127.0.0.1:5557"
    assert loopback_bind("tcp://127.0.0.1:5557") == "tcp://127.0.0.1:5557"
    assert loopback_bind("tcp://localhost:5557") == "tcp://localhost:5557"
    assert loopback_bind("ipc:///run/zsvc/bus-pub") == "ipc:///run/zsvc/bus-pub"
    for public in ("tcp://10.0.0.1:5557", "tcp://example.org:5557", "tcp://[2001:db8::1]:1"):
        with pytest.raises(BindError, match="loopback"):
            loopback_bind(public)

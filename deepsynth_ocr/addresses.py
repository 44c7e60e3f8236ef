"""Listening addresses, for the two servers (``serve`` and ``ui``): whether one is loopback-only, and whether
a port is free before anything slow (a model, the UI's state) is loaded."""

from __future__ import annotations

import ipaddress
import socket

from deepsynth_ocr.errors import UserError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address_free(host: str, port: int) -> None:
    """Fail before the model loads (a minute for a real checkpoint) when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another port with --port "
                            "or stop what uses it") from None

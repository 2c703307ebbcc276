"""Fixtures of the export tests: a socket guard that fails on any network access, and quieter
transformers logging."""

import socket

import pytest


class NetworkAccessError(AssertionError):
    """Raised by the socket guard: the code under test tried to reach the network."""


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any DNS lookup or socket connection (including the Hugging Face Hub)."""

    def refuse(*args, **kwargs):
        raise NetworkAccessError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    # Offline flags would hide network use instead of proving there is none: make sure they are off.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    yield


@pytest.fixture(autouse=True)
def _quiet_transformers():
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()

"""Shared fixtures. Models are module-scoped and small; the network is blocked in every test."""

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


class NetworkBlocked(RuntimeError):
    pass


_real_connect = socket.socket.connect
_real_getaddrinfo = socket.getaddrinfo
ATTEMPTS: list[str] = []


def _is_local(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (
        host in ("localhost", "::1", "") or host.startswith("127.") or host.startswith("/")
    )


def _guarded_connect(self, address):
    if self.family == socket.AF_UNIX or _is_local(address):
        return _real_connect(self, address)
    ATTEMPTS.append(repr(address))
    raise NetworkBlocked(f"test tried to reach the network: {address!r}")


def _guarded_getaddrinfo(host, *args, **kwargs):
    if _is_local((host,)):
        return _real_getaddrinfo(host, *args, **kwargs)
    ATTEMPTS.append(str(host))
    raise socket.gaierror(f"network blocked in tests: {host}")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Every test runs with outbound sockets refused (loopback is allowed)."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    yield


@pytest.fixture
def network_attempts():
    """The list of blocked network attempts; cleared at the start of the test."""
    ATTEMPTS.clear()
    return ATTEMPTS


@pytest.fixture(scope="session")
def random_tiny():
    from workbench.models.random_tiny import random_tiny as make

    return make()


@pytest.fixture(scope="session")
def minilm():
    from workbench import load_model

    return load_model("minilm", device="cpu")


def cuda_params():
    """Devices to parametrize over: CPU always, CUDA when present."""
    return [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ]

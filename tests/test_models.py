"""Model loading errors: one line, chosen by the exception's type (and its causes'), never by its wording."""

import socket

import pytest

from hdpainter.models import load_error

SOURCE = "stabilityai/stable-diffusion-2-inpainting"


def chained(outer: Exception, inner: Exception) -> Exception:
    """`outer` raised while handling `inner`, as diffusers wraps the hub's errors in an OSError."""
    try:
        try:
            raise inner
        except Exception:
            raise outer from inner
    except Exception as exc:
        return exc


def hub_response(status: int):
    import httpx

    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))


@pytest.mark.parametrize("kind", ["local entry", "offline mode", "dns", "connection"])
def test_unreachable_hub_suggests_a_local_folder(monkeypatch, kind):
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    inner = {
        "local entry": LocalEntryNotFoundError("cache miss"),
        "offline mode": OfflineModeIsEnabled("off"),
        "dns": socket.gaierror(-2, "Name or service not known"),
        "connection": ConnectionRefusedError(),
    }[kind]
    line = load_error("sd2", SOURCE, chained(OSError("Cannot load model"), inner), "--upscaler")
    assert line == (
        f"model 'sd2' ({SOURCE}) is not in the local cache and cannot be downloaded (offline?): "
        "download it on a connected machine or pass a local folder with --upscaler DIR"
    )


def test_missing_and_gated_repositories_are_told_apart():
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    missing = RepositoryNotFoundError("404", response=hub_response(404))
    gated = GatedRepoError("403", response=hub_response(403))  # a subclass of RepositoryNotFoundError
    assert load_error("org/x", "org/x", chained(OSError("x"), missing)).startswith(
        "model 'org/x' not found on the hub"
    )
    assert "is gated on the hub" in load_error("org/x", "org/x", chained(OSError("x"), gated))


def test_the_message_text_decides_nothing(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    line = load_error("org/x", "org/x", ValueError("offline 404 RepositoryNotFound connect timed out"))
    assert line.startswith("cannot load model 'org/x': ValueError: offline 404")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub forbidden: whatever failed, the cache lacked it
    assert "cannot be downloaded (offline?)" in load_error("org/x", "org/x", ValueError("anything"))

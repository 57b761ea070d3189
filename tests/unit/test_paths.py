"""Which daemon a command talks to: explicit, environment, the user's own, the system's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zsvc import paths


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An unprivileged user with an XDG runtime directory and a system directory to find."""
    monkeypatch.setattr(paths.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("ZSVC_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_DIR", tmp_path / "run-zsvc")
    return tmp_path


def test_without_any_daemon_the_users_own_directory_is_named(user: Path) -> None:
    assert paths.client_runtime_dir() == user / "xdg" / "zsvc"


def test_a_user_reaches_the_system_daemon_when_they_run_none(user: Path) -> None:
    (user / "run-zsvc").mkdir()
    assert paths.client_runtime_dir() == user / "run-zsvc"
    assert paths.runtime_dir() == user / "xdg" / "zsvc", "a user's daemon never takes /run/zsvc"


def test_the_users_own_daemon_wins_over_the_system_one(user: Path) -> None:
    (user / "run-zsvc").mkdir()
    (user / "xdg" / "zsvc").mkdir(parents=True)
    (user / "xdg" / "zsvc" / "control").touch()
    assert paths.client_runtime_dir() == user / "xdg" / "zsvc"


def test_explicit_and_environment_win(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (user / "run-zsvc").mkdir()
    assert paths.client_runtime_dir(user / "mine") == user / "mine"
    monkeypatch.setenv("ZSVC_RUNTIME_DIR", str(user / "env"))
    assert paths.client_runtime_dir() == user / "env"


def test_root_uses_the_system_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths.os, "geteuid", lambda: 0)
    monkeypatch.delenv("ZSVC_RUNTIME_DIR", raising=False)
    assert paths.client_runtime_dir() == paths.SYSTEM_RUNTIME_DIR


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A user without XDG_RUNTIME_DIR, whose fallback directory is *tmp_path*/zsvc-<uid>."""
    monkeypatch.delenv("ZSVC_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_DIR", tmp_path / "run-zsvc")
    monkeypatch.setattr(paths, "fallback_runtime_dir", lambda euid: tmp_path / f"zsvc-{euid}")
    return tmp_path


def test_a_fallback_directory_another_user_made_is_refused(
    fallback: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A squatter's /tmp/zsvc-<uid> with their own control socket gets no command."""
    owner = os.getuid()
    monkeypatch.setattr(paths.os, "geteuid", lambda: owner + 1)
    squatted = fallback / f"zsvc-{owner + 1}"
    squatted.mkdir(mode=0o700)
    (squatted / "control").touch()
    with pytest.raises(paths.UnsafeRuntimeDir, match=f"belongs to uid {owner}, not to you"):
        paths.client_runtime_dir()
    assert "XDG_RUNTIME_DIR" in paths.UnsafeRuntimeDir.hint


def test_a_fallback_directory_of_ones_own_is_used_once_private(
    fallback: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = os.getuid() or 4242  # as root, a directory given to a user (root's is /run/zsvc)
    monkeypatch.setattr(paths.os, "geteuid", lambda: uid)
    own = fallback / f"zsvc-{uid}"
    assert paths.client_runtime_dir() == own, "not made yet: nothing to check"
    own.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(own, uid, -1)
    own.chmod(0o700)
    assert paths.client_runtime_dir() == own
    own.chmod(0o777)
    with pytest.raises(paths.UnsafeRuntimeDir, match="may write to it"):
        paths.client_runtime_dir()

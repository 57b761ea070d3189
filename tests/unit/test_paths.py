"""Which daemon a command talks to: explicit, environment, the user's own, the system's."""

from __future__ import annotations

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

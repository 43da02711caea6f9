"""ioaware.env: the IOAWARE_* settings are read at call time."""


def test_settings_follow_the_environment_between_calls(monkeypatch):
    """settings() reuses its last Settings while the raw values are unchanged; a change is seen at the next call."""
    from ioaware.env import settings

    monkeypatch.delenv("IOAWARE_DEBUG", raising=False)
    first = settings()
    assert settings() is first and not first.debug
    monkeypatch.setenv("IOAWARE_DEBUG", "1")
    assert settings().debug
    monkeypatch.setenv("IOAWARE_CACHE_DIR", "/tmp/ioaware-x")
    assert str(settings().cache_dir) == "/tmp/ioaware-x"
    monkeypatch.delenv("IOAWARE_DEBUG")
    assert not settings().debug

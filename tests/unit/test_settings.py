import pytest

from voxserve.server.settings import Settings


def test_env_and_overrides_precedence():
    s = Settings.from_env({"VOXSERVE_PORT": "9001", "VOXSERVE_MAX_SESSIONS": "5", "VOXSERVE_ADMISSION": "off"},
                          max_sessions=7)
    assert s.port == 9001 and s.max_sessions == 7 and s.admission is False


@pytest.mark.parametrize("env", [{"VOXSERVE_PORT": "x"}, {"VOXSERVE_PORT": "70000"}, {"VOXSERVE_MAX_SESSIONS": "0"},
                                 {"VOXSERVE_LOG_FORMAT": "xml"}, {"VOXSERVE_ENGINE": "gpu9000"}])
def test_invalid_settings_raise_clear_errors(env):
    with pytest.raises(ValueError, match="VOXSERVE_|invalid settings"):
        Settings.from_env(env)


def test_engine_torch_is_refused_at_validation_with_the_reason():
    """The torch engine runs torch modules; the server serves ONNX models. Refused before anything loads,
    instead of a server that fails at start."""
    import pytest

    from voxserve.server.settings import Settings

    with pytest.raises(ValueError, match="engine torch runs torch modules"):
        Settings(engine="torch")
    assert Settings(engine="onnxruntime-cpu").engine == "onnxruntime-cpu"

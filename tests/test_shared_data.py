"""tests.conftest.shared_data: real-data tests skip on a user's machine but fail under CI=true."""
import pytest

from tests.conftest import SHARED_DATA, shared_data, under_ci


@pytest.mark.parametrize("value,ci", [("true", True), ("1", True), ("TRUE", True), ("", False), ("false", False)])
def test_under_ci(monkeypatch, value, ci):
    monkeypatch.setenv("CI", value)
    assert under_ci() is ci


def test_missing_data_skips_for_a_user(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="real data not found"):
        shared_data("no-such-dataset")


def test_missing_data_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        shared_data("no-such-dataset")
    with pytest.raises(pytest.fail.Exception, match="missing.file"):
        shared_data(".", "missing.file")       # a required file inside an existing folder counts too


def test_present_data_is_returned(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    if not SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data on this machine")   # only this self-test; the real-data tests fail
    assert shared_data(".") == SHARED_DATA.resolve()

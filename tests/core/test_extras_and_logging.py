"""Optional extras fail with one line naming the extra; third-party loggers stay at WARNING unless --verbose."""

from __future__ import annotations

import logging
import sys

import pytest

from namus_edge.cli import main, setup_logging
from namus_edge.core.extras import MissingExtraError, require_extra


def test_require_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"""'onnxslim': pip install "namus-edge\[export\]\""""):
        require_extra("onnxslim", "export", "namus-edge export onnx")


def test_require_extra_does_not_mask_an_import_error_inside_an_installed_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_pkg_xyz.py").write_text("import no_such_module_inside_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_module_inside_xyz"):
        require_extra("broken_pkg_xyz", "export", "a feature")


@pytest.mark.parametrize(("blocked", "argv", "extra"), [
    ("onnx", ["export", "onnx", "--model", "age_v1"], "export"),
    ("skimage", ["demo", "--frames", "5"], "demo"),
    ("uvicorn", ["review", "serve"], "review"),
])
def test_cli_without_an_extra_prints_one_line(blocked, argv, extra, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.setitem(sys.modules, f"{blocked}.data", None)
    extra_args = {"export": ["--out", str(tmp_path / "out")], "demo": ["--workdir", str(tmp_path)],
                  "review": ["--set", f"review.database_url=sqlite:///{tmp_path / 'r.db'}"]}[argv[0]]
    rc = main([*argv, *extra_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("namus-edge: error:") and f'pip install "namus-edge[{extra}]"' in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_third_party_loggers_are_quiet_unless_verbose() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        setup_logging("INFO")
        assert logging.getLogger("namus_edge.edge.service").isEnabledFor(logging.INFO)
        assert not logging.getLogger("amqtt.broker").isEnabledFor(logging.INFO)
        assert not logging.getLogger("transitions.core").isEnabledFor(logging.INFO)
        assert logging.getLogger("amqtt.broker").isEnabledFor(logging.WARNING)
        setup_logging("INFO", verbose=True)
        assert logging.getLogger("amqtt.broker").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(before)
        logging.getLogger("namus_edge").setLevel(logging.NOTSET)

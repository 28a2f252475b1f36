"""app/extras.py: a command whose extra is not installed says which `pip install` it needs."""

from __future__ import annotations

import pytest

from app.errors import UserError
from app.extras import missing, require


def test_a_missing_module_names_the_pip_install_of_its_extra():
    with pytest.raises(UserError) as raised:
        require("serve", "json", "app_no_such_module_xyz")
    message = str(raised.value)
    assert "the serve command needs the serve extra: pip install 'raytab[serve]'" in message
    assert "app_no_such_module_xyz" in message and "json" not in message.split("missing:")[1]


def test_a_dotted_name_under_a_missing_package_counts_as_missing():
    assert missing("app_no_such_module_xyz.sub", "json.decoder", "json") == ["app_no_such_module_xyz.sub"]


def test_installed_modules_pass_without_being_imported(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "csv", raising=False)
    require("report", "json", "csv")  # no error
    assert "csv" not in sys.modules  # found, not imported


def test_what_and_hint_shape_the_message():
    with pytest.raises(UserError, match=r"^tracking.mlflow needs the tracking extra: pip install 'raytab\[tracking\]' "
                                        r"\(missing: app_nope\); or else$"):
        require("tracking", "app_nope", what="tracking.mlflow", hint="; or else")


def test_tracking_turned_on_without_its_packages_is_refused_and_off_needs_nothing(tmp_path, monkeypatch):
    import app.extras
    from app import tracking
    from app.config import Config
    from tests.conftest import penguins_tree

    monkeypatch.setattr(app.extras, "missing", lambda *modules: list(modules))  # nothing installed
    tree = penguins_tree(tmp_path)
    tracking.require_installed(Config.model_validate(tree))  # tracking off: nothing needed
    tree["tracking"] = {"mlflow": True, "tensorboard": False}
    with pytest.raises(UserError, match=r"tracking.mlflow needs the tracking extra: pip install 'raytab\[tracking\]' "
                                        r"\(missing: mlflow, alembic\) \(or set tracking.mlflow: false"):
        tracking.require_installed(Config.model_validate(tree))
    tree["tracking"] = {"mlflow": False, "tensorboard": True}
    with pytest.raises(UserError, match=r"tracking.tensorboard needs the tracking extra"):
        tracking.require_installed(Config.model_validate(tree))


def test_a_sweep_without_matplotlib_skips_its_plot_with_a_warning(tmp_path, monkeypatch, capsys):
    import app.extras
    from app.tuning import plot_curves

    monkeypatch.setattr(app.extras, "missing", lambda *modules: list(modules))
    plot_curves({}, "valid_loss", str(tmp_path / "curves.png"))
    assert not (tmp_path / "curves.png").exists()
    err = capsys.readouterr().err  # the `app` logger's terminal handler (app/logs.py)
    assert "warning: sweep: no curves.png" in err and "raytab[report]" in err

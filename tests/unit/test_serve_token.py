"""`serve --token-file`: a file that other users have access to gets one warning (issue 28)."""

from __future__ import annotations

import pytest

from app.serve import read_token

TOKEN = "0123456789abcdef" * 2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_token_file_open_to_other_users_gets_one_warning_naming_it(tmp_path, capsys, mode):
    path = tmp_path / "serve.token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    assert read_token(str(path)) == TOKEN
    err = capsys.readouterr().err
    assert err.splitlines() == [(f"warning: --token-file {path}: other users have access to it (mode {mode:03o}); "
                                 f"keep the token to yourself with chmod 600 {path}")]
    assert TOKEN not in err


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_token_file_gets_no_warning(tmp_path, capsys, mode):
    path = tmp_path / "serve.token"
    path.write_text(TOKEN)
    path.chmod(mode)
    assert read_token(str(path)) == TOKEN
    assert capsys.readouterr().err == ""

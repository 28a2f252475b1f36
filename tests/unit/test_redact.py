"""Credentials in URIs never reach printed or written text; other text is left alone."""

from __future__ import annotations

import io
import sys
from urllib.parse import quote

from hypothesis import assume, given
from hypothesis import strategies as st

from app.redact import RedactingStream, redact, redact_tree, redacted_output

SCHEMES = st.sampled_from(["s3", "gs", "http", "https", "postgresql", "mysql+pymysql", "abfs"])
HOSTS = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?(:[0-9]{1,5})?", fullmatch=True)
PATHS = st.from_regex(r"(/[A-Za-z0-9._~@:=+-]{0,12}){0,4}", fullmatch=True)
QUERIES = st.from_regex(r"(\?(region|scheme|endpoint_override|access_key|v)=[A-Za-z0-9.:-]{0,10}"
                        r"(&(region|scheme|allow_bucket_creation)=[a-z0-9]{0,6}){0,2})?", fullmatch=True)
# AWS secret access keys: 40 characters of base64, `/` and `+` included, often pasted unencoded.
RAW_SECRETS = st.from_regex(r"[A-Za-z0-9+/=]{1,40}", fullmatch=True)


@given(scheme=SCHEMES, user=st.text(max_size=12), password=st.text(min_size=1, max_size=24), host=HOSTS,
       path=PATHS)
def test_a_percent_encoded_password_never_survives(scheme, user, password, host, path):
    user, password = quote(user, safe=""), quote(password, safe="")
    rest = f"{host}{path}"
    assume(password not in f"{scheme}://{user}:@{rest}")  # else it "appears" without being leaked
    uri, shown = f"{scheme}://{user}:{password}@{rest}", f"{scheme}://{user}:***@{rest}"
    assert password not in redact(uri)
    for template in ("{}", "error: cannot open '{}' (denied)", "run folder: {}\n"):
        # all else kept: which user, which host and path, and the text around the URI
        assert redact(template.format(uri)) == template.format(shown)


@given(scheme=SCHEMES, user=st.from_regex(r"[A-Z0-9]{0,20}", fullmatch=True), password=RAW_SECRETS, host=HOSTS,
       path=PATHS)
def test_an_unencoded_secret_key_never_survives(scheme, user, password, host, path):
    assume(password not in f"{scheme}://{user}:@{host}{path}")
    out = redact(f"{scheme}://{user}:{password}@{host}{path}")
    assert password not in out
    assert out == f"{scheme}://{user}:***@{host}{path}"


@given(scheme=SCHEMES, host=HOSTS, path=PATHS, query=QUERIES, user=st.from_regex(r"([a-z]{1,8}@)?", fullmatch=True))
def test_uris_without_secrets_are_unchanged(scheme, host, path, query, user):
    # (a port followed by a path with `@` in it is masked: it reads like `user:secret/...@`)
    assume(not (":" in host and "@" in path))
    uri = f"{scheme}://{user}{host}{path}{query}"
    assert redact(uri) == uri
    assert redact(f"written: {uri} (3 files)") == f"written: {uri} (3 files)"


@given(secret=st.from_regex(r"[A-Za-z0-9/+%]{1,30}", fullmatch=True),
       key=st.sampled_from(["secret_key", "SECRET_KEY", "session_token", "password", "X-Amz-Signature", "sig"]))
def test_secret_query_values_are_hidden(secret, key):
    uri = f"s3://bucket/runs?access_key=AKIA1&{key}={secret}&region=eu-west-1"
    out = redact(uri)
    assert out == f"s3://bucket/runs?access_key=AKIA1&{key}=***&region=eu-west-1"


def test_plain_text_and_local_paths_are_unchanged():
    for text in ("sqlite:////tmp/runs/mlflow.db", "/data/x@y.csv", "train.lr=0.001", "user@example.com",
                 "http://127.0.0.1:8265", "file:///tmp/a:b/c@d.csv", "a=b; c=d", "", "ssh://git@github.com/x"):
        assert redact(text) == text


def test_trees_and_streams_are_redacted():
    tree = {"run": {"storage": "s3://AK:SK@bucket/runs"}, "list": ["http://u:pw@h/x", 3, None], "n": 1.5}
    assert redact_tree(tree) == {"run": {"storage": "s3://AK:***@bucket/runs"}, "list": ["http://u:***@h/x", 3, None],
                                 "n": 1.5}
    assert tree["run"]["storage"] == "s3://AK:SK@bucket/runs"  # a copy: the process keeps the real URI

    sink = io.StringIO()
    stream = RedactingStream(sink)
    print("resuming from s3://AK:SK@bucket/runs/x/checkpoint_epoch_0002", file=stream, flush=True)
    assert sink.getvalue() == "resuming from s3://AK:***@bucket/runs/x/checkpoint_epoch_0002\n"

    before = sys.stdout, sys.stderr
    with redacted_output():
        assert isinstance(sys.stdout, RedactingStream) and sys.stdout.stream is before[0]
    assert (sys.stdout, sys.stderr) == before


def test_the_cli_error_line_hides_the_password(tmp_path, capsys):
    """A URI that pyarrow cannot use is quoted back in the error line, without its secret."""
    import yaml

    from app.cli import main
    from tests.conftest import penguins_tree

    for uri, shown in (("s3://AKIAEXAMPLE:ab/Secret1@bucket/x.csv", "s3://AKIAEXAMPLE:***@bucket/x.csv"),
                       ("s3://bucket/x.csv?access_key=AKIAEXAMPLE&secret_key=Secret2",
                        "s3://bucket/x.csv?access_key=AKIAEXAMPLE&secret_key=***")):
        tree = penguins_tree(tmp_path)
        tree["data"]["train"] = uri
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
        assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
        out, err = capsys.readouterr()
        assert err.startswith(f"error: cannot open {shown}"), err
        assert "Secret" not in out + err


def test_a_checkpoint_of_the_redacted_config_fits_the_run_with_the_real_one(tmp_path):
    """Checkpoints store the config redacted; resuming with the real URIs is the same setup."""
    import pytest

    from app.config import Config
    from app.errors import UserError
    from app.training.resume import check_same_setup
    from tests.conftest import penguins_tree

    def config(test_uri: str) -> Config:
        tree = penguins_tree(tmp_path)
        tree["data"]["test"] = test_uri
        return Config.model_validate(tree)

    running = config("s3://AKIAEXAMPLE:Secret3@bucket/test.csv")
    saved = Config.model_validate(redact_tree(running.to_dict()))
    assert saved.data.test == "s3://AKIAEXAMPLE:***@bucket/test.csv"
    check_same_setup(saved, running, "checkpoint c")
    with pytest.raises(UserError, match=r"data.test is 's3://AKIAEXAMPLE:\*\*\*@bucket/test.csv' there and "
                                        r"'s3://AKIAEXAMPLE:\*\*\*@bucket/other.csv' here") as refused:
        check_same_setup(saved, config("s3://AKIAEXAMPLE:Secret3@bucket/other.csv"), "checkpoint c")
    assert "Secret3" not in str(refused.value)

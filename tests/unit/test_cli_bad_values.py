"""Bad values on the command line and in the environment: one clear line, exit code 2, nothing
started. The whole CLI is walked, so a new option or command is covered (or the walk fails)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from clickstream import cli
from clickstream.config import CHECKED_VARIABLES, ConfigError, get_settings
from clickstream.serve.store import StoreError, open_store


def leaf_commands(group: click.Group = cli.main, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def valued_params():
    for path, command in leaf_commands():
        for param in command.params:
            if not getattr(param, "is_flag", False):
                yield pytest.param(path, param, id=" ".join((*path, param.opts[0])))


# What each checked type must reject (and accept), by the type's name: a new type needs both.
CHECKED = {
    "url": (
        ["redis://h:notaport", "ftp://x", "postgresql://me@h:70000/db", "sqlite://x.db"],
        ["sqlite:///x.db", "rediss://h:6380/0", "postgres://me@h1:5432,h2:5433/db"],
    ),
    "host:port,...": (
        ["localhost", "h:70000", "h:abc", "h:9092,", "h :9092"],
        ["127.0.0.1:9092", "a:9092,b:9093", "SASL_SSL://h:9093", "[::1]:9092"],
    ),
    "topic": (["no spaces", "a/b", "."], ["user_clickstream", "a.b-c"]),
    "master": (
        ["nope", "spark://h", "local[0]", "spark://h:99999"],
        ["local", "local[*]", "local[2, 3]", "spark://127.0.0.1:7077", "yarn"],
    ),
    "duration": (["soon", "-1 seconds", "10 parsecs"], ["1 minute", "90s", "2 min"]),
    "time": (["yesterday", "2026-13-01T00:00:00Z"], ["2026-11-28T10:15:00Z"]),
    "size": (["lots", "0g", "512"], ["512m", "2g", "1GB"]),
    "start:end:rate": (["1:2", "2:1:0.1", "1:2:1.5", "a:b:c"], ["60:120:0.2"]),
    "start:end:multiplier": (["1:2:x", "1:2:0"], ["60:120:3"]),
    "name=value": (["novalue", "=1"], ["EVENT_RATE=100"]),
    "column=value": (["novalue", "=x"], ["event_type=page_view"]),
    "name": (["no_such_metric", "traffic_2m"], ["traffic", "traffic_5m", "health"]),
}

# Options where any text is acceptable; any other text option needs a type that checks it.
FREE_TEXT = {
    ("course", "execute", "--only"): "a prefix of notebook names",
    ("dashboard", "--host"): "a host name or address: binding the port tells",
    ("dashboard", "--base-url-path"): "a URL path",
    ("lag", "--group"): "a consumer group id",
}

# Values for required parameters, so that a command reaches the point where it would start.
REQUIRED = {
    ("simulate",): ["-o", "events.jsonl"],
    ("metrics",): ["traffic"],
    ("broker", "stop-node"): ["1"],
    ("broker", "start-node"): ["1"],
}


def bad_values(path, param, tmp_path) -> list[str]:
    """Values `param`'s type must reject; fails for a type that checks nothing."""
    kind, where = param.type, " ".join((*path, param.opts[0]))
    if isinstance(kind, click.IntRange):
        if (kind.min, kind.max) == (1, 65535):
            return ["-1", "70000", "abc"]
        assert kind.min is not None, f"{where}: give the range a minimum"
        return ["abc", str(kind.min if kind.min_open else kind.min - 1)]
    if isinstance(kind, click.FloatRange):
        assert kind.min is not None, f"{where}: give the range a minimum"
        below = kind.min if kind.min_open else kind.min - 0.5
        above = [] if kind.max is None else [str(kind.max + 0.5)]
        return ["abc", str(below), *above]
    if isinstance(kind, click.Choice):
        return ["nope"]
    if isinstance(kind, click.Path):  # the wrong kind of file-system entry
        if kind.exists:
            return [str(tmp_path / "missing")]
        wrong = [] if kind.dir_okay else [tmp_path]
        return [str(p) for p in wrong + ([] if kind.file_okay else [tmp_path / "file"])]
    if isinstance(kind, cli._Checked):
        assert kind.name in CHECKED, f"{where}: add the bad values of type {kind.name!r}"
        return CHECKED[kind.name][0]
    if kind is click.STRING and path + (param.opts[0],) in FREE_TEXT:
        return []
    pytest.fail(
        f"{where} has type {kind.name!r}, which accepts bad values: give it a range "
        "(click.IntRange, click.FloatRange), a click.Choice or a checked type."
    )


@pytest.fixture
def nothing_runs(monkeypatch):
    """Every command's body replaced by a recorder: the checks come before it, or it is a bug."""
    ran = []
    for path, command in leaf_commands():
        monkeypatch.setattr(command, "callback", lambda *a, _path=path, **k: ran.append(_path))
    return ran


@pytest.mark.parametrize(("path", "param"), list(valued_params()))
def test_every_option_rejects_bad_values_before_any_work(path, param, tmp_path, nothing_runs):
    (tmp_path / "file").write_text("")
    named = param.opts if isinstance(param, click.Option) else [param.human_readable_name]
    for value in bad_values(path, param, tmp_path):
        # After `--`, -1 is an argument's value, not an option.
        args = [*path, *((param.opts[0],) if isinstance(param, click.Option) else ("--",)), value]
        result = CliRunner().invoke(cli.main, args)
        shown = f"clickstream {' '.join(args)}: {result.output}"
        assert result.exit_code == 2, shown
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and any(f"'{name}'" in errors[0] for name in named), shown
    assert nothing_runs == []


def test_the_walk_fails_for_an_option_that_checks_nothing(tmp_path):
    for unchecked in (int, float, str):
        option = click.Option(["--new"], type=unchecked)
        with pytest.raises(pytest.fail.Exception, match="accepts bad values"):
            bad_values(("demo",), option, tmp_path)
    with pytest.raises(AssertionError, match="minimum"):
        bad_values(("demo",), click.Option(["--new"], type=click.IntRange(max=9)), tmp_path)


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_checked_types_accept_good_values(name):
    kinds = [p.type for _, c in leaf_commands() for p in c.params if p.type.name == name]
    assert kinds, f"no option has type {name!r} any more: remove it from CHECKED"
    for kind in kinds:
        for value in CHECKED[name][1]:
            kind.convert(value, None, None)


def test_every_command_reaches_its_body_with_its_defaults(nothing_runs):
    for path, _ in leaf_commands():
        result = CliRunner().invoke(cli.main, [*path, *REQUIRED.get(path, [])])
        assert result.exit_code == 0, f"{' '.join(path)}: {result.output}"
    assert len(nothing_runs) == len(list(leaf_commands()))


def test_a_password_in_a_bad_store_url_is_not_shown(nothing_runs):
    url = "postgresql://me:hunter2@h:notaport/db"
    result = CliRunner().invoke(cli.main, ["metrics", "traffic", "--store", url])
    assert result.exit_code == 2 and "postgresql://me:***@h:notaport/db" in result.output
    assert "hunter2" not in result.output


# -- the environment ------------------------------------------------------------------------

BAD_ENVIRONMENT = {
    "CLICKSTREAM_KAFKA_PORT": ["abc", "70000", "-1"],
    "CLICKSTREAM_TOPIC": ["no spaces"],
    "CLICKSTREAM_STORE": ["redis://h:notaport", "ftp://x"],
    "CLICKSTREAM_MAVEN_REPO": ["not a url"],
    "KAFKA_BOOTSTRAP_SERVERS": ["localhost", "h:0"],
    "SPARK_MASTER": ["nope"],
}


def test_every_checked_variable_has_bad_values():
    assert set(BAD_ENVIRONMENT) == set(CHECKED_VARIABLES)


@pytest.mark.parametrize(
    ("variable", "value"), [(k, v) for k, values in BAD_ENVIRONMENT.items() for v in values]
)
def test_a_bad_variable_is_one_line_and_exit_code_2_on_every_command(
    variable, value, monkeypatch, nothing_runs
):
    monkeypatch.setenv(variable, value)
    for path, _ in leaf_commands():
        result = CliRunner().invoke(cli.main, [*path, *REQUIRED.get(path, [])])
        shown = f"{variable}={value} clickstream {' '.join(path)}: {result.output}"
        assert result.exit_code == 2, shown
        assert result.output.startswith(f"error: {variable}: "), shown
        assert result.output.count("\n") == 1 and repr(value) in result.output, shown
        assert "or unset" in result.output, shown
    assert nothing_runs == []


def test_library_callers_get_the_same_error(monkeypatch):
    monkeypatch.setenv("CLICKSTREAM_KAFKA_PORT", "abc")
    with pytest.raises(ConfigError, match="CLICKSTREAM_KAFKA_PORT: 'abc' is not a port"):
        get_settings()
    monkeypatch.delenv("CLICKSTREAM_KAFKA_PORT")
    monkeypatch.setenv("CLICKSTREAM_STORE", "redis://:hunter2@h:notaport/0")
    with pytest.raises(ConfigError, match="CLICKSTREAM_STORE") as err:
        open_store()
    assert "hunter2" not in str(err.value)
    with pytest.raises(StoreError, match="not a number from 1 to 65535"):
        open_store("redis://h:notaport/0")

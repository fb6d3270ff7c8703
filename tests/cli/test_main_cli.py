"""Global flags of the `vfrt` group: --version, -v / -q before or after the sub-command."""
import logging

import pytest
from click.testing import CliRunner

from vfrt import __version__
from vfrt.cli.main import cli


@pytest.fixture
def root_level():
    """The root logger's level after an invocation (restored afterwards)."""
    root = logging.getLogger()
    before = root.level
    yield lambda: root.level
    root.setLevel(before)


def test_version():
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"vfrt {__version__}"


@pytest.mark.parametrize("args, level", [
    (["doctor", "--json"], logging.WARNING),
    (["-v", "doctor", "--json"], logging.INFO),
    (["doctor", "-v", "--json"], logging.INFO),             # after the sub-command too
    (["doctor", "--json", "-vv"], logging.DEBUG),
    (["-v", "doctor", "--verbose", "--json"], logging.DEBUG),   # occurrences add up
    (["-q", "doctor", "--json"], logging.ERROR),
    (["doctor", "--quiet", "--json"], logging.ERROR),
    (["doctor", "-qq", "--json"], logging.CRITICAL),
    (["-v", "doctor", "-q", "--json"], logging.WARNING),
])
def test_verbosity_flags_anywhere(args, level, root_level):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert root_level() == level


def test_every_command_takes_the_flags():
    from vfrt.cli.main import LazyGroup
    group = cli
    assert isinstance(group, LazyGroup)
    ctx = cli.make_context("vfrt", ["doctor"], resilient_parsing=True)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        flags = {opt for p in command.params for opt in p.opts}
        assert {"-v", "--verbose", "-q", "--quiet"} <= flags, name
        group.get_command(ctx, name)
        assert sum(p.name == "verbose" for p in command.params) == 1, name    # added once only


def test_run_accepts_v_after_the_command(tmp_path, root_level):
    res = CliRunner().invoke(cli, ["run", "-v", str(tmp_path / "missing.png")])
    assert res.exit_code != 0 and "No such option" not in res.output and "does not exist" in res.output
    assert root_level() == logging.INFO          # set before the other arguments were checked

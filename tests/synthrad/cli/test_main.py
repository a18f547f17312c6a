"""The `synthrad` command group (synthrad/cli/main.py) reaches the subcommands."""

import json

from click.testing import CliRunner


def test_commands_are_reachable_from_the_synthrad_group():
    from synthrad.cli.main import cli

    res = CliRunner().invoke(cli, ["conditions", "parse", "without enlarged cardiac silhouette"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["condition"]["enlarged_cardiac_silhouette"] == "absent"

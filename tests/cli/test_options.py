"""Every command keeps the options it had in bertflow 0.1 (recorded from that version's CLI in
data/options-0.1.json): scripts and deployments written against it still run. Later versions add
commands and options; none is taken away or renamed."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from bertflow.cli import app

RECORDED = json.loads((Path(__file__).parent / "data" / "options-0.1.json").read_text())


def test_every_command_keeps_its_options():
    group = typer.main.get_command(app)
    now = {
        name: sorted(o for p in command.params if type(p).__name__ == "TyperOption" for o in p.opts + p.secondary_opts)
        for name, command in group.commands.items()
    }
    assert set(RECORDED) <= set(now)
    for name, options in RECORDED.items():
        missing = sorted(set(options) - set(now[name]))
        assert not missing, f"{name} lost {missing}"

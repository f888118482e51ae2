"""Each list of names a command shows (choices and help) is its registry's: the flags are built at start-up
without importing torch or pandas, so these lists are written in the commands and checked here against the
registries that own the names."""

from __future__ import annotations

import re

import pytest

from domainbed_recycle import cli


def _action(command: str, flag: str):
    parser, _ = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", ["sweep", "recycle"])
def test_launcher_help_lists_every_registered_launcher(command):
    from domainbed_recycle.sweep.launchers import LAUNCHERS

    help_text = _action(command, "--launcher").help
    missing = [name for name in LAUNCHERS.names() if not re.search(rf"\b{name}\b", help_text)]
    assert not missing, (command, missing, help_text)


def test_selection_names_are_the_selection_methods():
    from domainbed_recycle.collect.selection import METHODS
    from domainbed_recycle.commands.collect import SELECTIONS

    assert SELECTIONS == tuple(METHODS)
    assert set(_action("collect", "--selection").choices) == {*METHODS, "all"}
    recycle_help = _action("recycle", "--selection").help
    assert all(re.search(rf"\b{name}\b", recycle_help) for name in METHODS), recycle_help


def test_profile_help_lists_every_profile():
    from domainbed_recycle.hparams_registry import PROFILES

    help_text = _action("train", "--hparams_profile").help
    assert all(re.search(rf"\b{name}\b", help_text) for name in PROFILES), help_text

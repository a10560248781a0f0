"""Run names (docs/run-format.md, "Run names"): one plain folder name under the output folder."""

from __future__ import annotations

import re

from runformat.errors import RunNameError

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
RUN_NAME_RULE = ("must be one folder name of letters, digits, '.', '_', '+' and '-' that starts with a letter or digit "
                 "and has no '..' (at most 128 characters), e.g. camvid-mscs")
"""The rule in words, for error messages."""


def is_run_name(name: object) -> bool:
    """Whether ``name`` is a valid run name: no separators, no ``..``, not hidden, not empty, at most 128 characters."""
    return isinstance(name, str) and RUN_NAME.fullmatch(name) is not None and ".." not in name


def check_run_name(name: object, option: str = "--name") -> str:
    """Return ``name`` if it is a valid run name, else raise RunNameError naming ``option`` and the rule."""
    if is_run_name(name):
        return name
    raise RunNameError(f"{option} {name!r} is not a valid run name: it {RUN_NAME_RULE}")

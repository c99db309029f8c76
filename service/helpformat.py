"""The `--help` layout of every imgclf command: each option shows its default."""

from __future__ import annotations

import argparse
import copy


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says its default or
    there is none to say (None, False, an empty string or list)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and self._get_help_string(action):  # an option with no help text
            action = copy.copy(action)
            action.help = ""
            action.help = self._get_help_string(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default == ""
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return action.help
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        shown = shown.replace("%", "%%")  # argparse %-formats help strings
        return f"{text} (default: {shown})".strip() if text else f"(default: {shown})"

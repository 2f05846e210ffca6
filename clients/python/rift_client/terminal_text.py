"""Text from the service, made safe to print on a terminal.

What ``riftctl`` prints in text form holds strings other people chose: a teammate's webhook
description or label value, a job's error and progress messages (which quote module names
from an uploaded checkpoint). A terminal runs the control sequences such a string may carry:
ESC sequences clear the screen, rewrite earlier lines, set the window title or, on some
terminals, write the clipboard (OSC 52); bidirectional overrides show text in another order
than it is. rich, which prints for ``riftctl``, removes only BEL, BS, VT, FF and CR.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.text import Text

# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-character CSI), and the
# bidirectional embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on written as its escape
    (``\\x1b``, ``\\u202e``); tab and newline are kept."""
    return _UNSAFE.sub(lambda match: repr(match.group())[1:-1], text)


class TerminalConsole(Console):
    """A console whose printed strings (messages, table cells) pass :func:`terminal_safe`."""

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(terminal_safe(text), **options)

"""``rift_client.terminal_text``: what a terminal would act on is written as its escape."""

from __future__ import annotations

import io

from rich.table import Table

from rift_client.terminal_text import TerminalConsole, terminal_safe


def test_controls_and_bidi_overrides_become_escapes_tab_and_newline_stay() -> None:
    assert terminal_safe("a\x1b[31mb\x07\x7f\x9bc\u202ed\u2066e") == (
        "a\\x1b[31mb\\x07\\x7f\\x9bc\\u202ed\\u2066e")
    assert terminal_safe("line\tone\nline two é ü 日本") == "line\tone\nline two é ü 日本"


def test_the_console_escapes_messages_and_table_cells() -> None:
    out = io.StringIO()
    console = TerminalConsole(file=out, markup=False, width=200)
    table = Table()
    table.add_column("name")
    table.add_row("x\x1b]0;title\x07")
    console.print(table)
    console.print("say \x1b[2J", highlight=False)
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "x\\x1b]0;title\\x07" in out.getvalue() and "say \\x1b[2J" in out.getvalue()

"""How ``riftctl --help`` shows its options: a flag without a value type (and how a command
ends when its reader closes the pipe: see :class:`RiftCommand`).

typer 0.29's rich help prints every option's value type, flags included, so ``--wait``,
``--quiet`` and ``--help`` itself read ``--wait <bool>`` as though they took a value (they take
none: ``--wait true`` is "Got unexpected extra argument"). Its plain-text help leaves flags
bare; the rich one asks the option for ``display_type_rich``, which answers the option's
``metavar`` when it has one. Every command and group of ``riftctl`` is made from the classes
below, which give each flag an empty metavar before the help is drawn: the options, what they
accept and their help texts stay as they are.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

import typer
from typer import core as typer_core
from typer.models import CommandFunctionType


def _bare_flags(params: list[Any]) -> list[Any]:
    """``params`` with each boolean flag's shown type emptied (a count, ``-v -v``, keeps its
    ``<int>``: it is not a bool)."""
    for param in params:
        if isinstance(param, typer_core.TyperOption) and param.is_bool_flag:
            param.metavar = ""
    return params


@contextlib.contextmanager
def _quiet_when_the_reader_leaves() -> Iterator[None]:
    """End with exit 0, silently, when stdout's reader closed the pipe (``| head -1``).

    click turns a closed stdout into exit 1, which riftctl's table reserves for a failed job,
    and a command writing JSON lines met it inside its client's error handling
    ("local_file_error: [Errno 32] Broken pipe", exit 2). The reader has what it wanted, as
    `rift-admin` treats it; stdout goes to /dev/null so that the interpreter's last flush is
    quiet too. Used where output is written: a command's run, and making a command's context,
    where click prints ``--help`` (and a group's usage) before any command runs."""
    try:
        yield
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


@contextlib.contextmanager
def _rich_exit_as_broken_pipe() -> Iterator[None]:
    """While help is drawn: rich's console answers a closed stdout with ``SystemExit(1)``
    (``Console.on_broken_pipe``, after pointing stdout at /dev/null), the only exit drawing can
    raise; it is turned back into the ``BrokenPipeError`` that
    :func:`_quiet_when_the_reader_leaves` ends on with exit 0."""
    try:
        yield
    except SystemExit as exc:
        if exc.code != 1:
            raise
        raise BrokenPipeError from None


class _RiftHelpAndPipes:
    """What riftctl's commands and groups share: help that shows flags without ``<bool>``, and
    a quiet exit 0 when the reader leaves early, whether while the help is printed (before any
    command runs: ``riftctl --help | head -1``) or while a command writes
    (``riftctl jobs curves JOB | head -1``). Put before the click class it changes, whose
    methods ``super()`` reaches (typed Any: a mixin's ``super()`` is ``object`` to mypy)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(cast(Any, super()).get_params(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _rich_exit_as_broken_pipe():
            cast(Any, super()).format_help(ctx, formatter)

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _quiet_when_the_reader_leaves():
            return cast(Any, super()).make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _quiet_when_the_reader_leaves():
            return cast(Any, super()).invoke(ctx)


class RiftCommand(_RiftHelpAndPipes, typer_core.TyperCommand):
    """A riftctl command (:class:`_RiftHelpAndPipes`)."""


class RiftGroup(_RiftHelpAndPipes, typer_core.TyperGroup):
    """A riftctl command group (:class:`_RiftHelpAndPipes`)."""


class RiftTyper(typer.Typer):
    """A ``typer.Typer`` whose groups are :class:`RiftGroup` and whose commands are
    :class:`RiftCommand` unless a command names its own class."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", RiftGroup)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, *,
                cls: type[typer_core.TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls or RiftCommand, **kwargs)

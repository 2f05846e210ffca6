"""``mrc.table = "selection"``: the module(s) the full MRC table would choose, with fewer passes.

A module's MRC after any number of ascent passes is a running maximum of measured losses minus the
baseline, and so is the tie-break ``max_ascent_loss``: its selection key ``(mrc,
max_ascent_loss)`` (``rift.mrc.selection_key``) after pass j is a lower bound, in lexicographic
order, of its final key. The pipeline tunes the ``keep`` lowest keys (``finetune.candidates``).
Once ``keep`` modules are complete, a module whose lower bound is *strictly* greater than the
``keep``-th smallest complete key can never be among the ``keep`` lowest: its ascent can stop.
Equality continues, so every module that ties with a chosen one is complete and the choice
among equals is the full table's (table order).

Schedule: phase A screens every module with ``screen`` passes (cheap: a module's lower bound after
one pass already separates most of a trained network's modules, bench/results/
mrc_selection_cpu.json); phase B takes the paused modules in ascending order of their bound and
runs each pass by pass until it completes (the bar may fall) or its bound passes the bar. Sorting
first means the modules most likely chosen complete first and set a low bar early.

The scheduler only sees numbers: ``advance(i)`` runs module i's next pass and returns its running
key, ``pause(i)`` frees what a paused module can rebuild, ``finish(i, exact)`` ends it (the
caller builds its row). ``rift.mrc`` drives real ascents through it; the tests drive made-up loss
sequences to check that the choice is always the full table's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

Key = tuple[float, float]

#: Passes every module gets before any is stopped. Measured on ResNet-18 (CIFAR-shaped) and the
#: digits model against 2 (bench/mrc.py --table-screen, bench/results/mrc_selection_cpu.json).
SCREEN_PASSES = 1

_NO_BAR: Key = (math.inf, math.inf)


def run_selection(count: int, *, steps: int, keep: int,
                  advance: Callable[[int], Key], pause: Callable[[int], None],
                  finish: Callable[[int, bool], None], screen: int = SCREEN_PASSES,
                  required: Collection[int] = (), ineligible: Collection[int] = ()
                  ) -> list[int]:
    """Run modules ``0..count-1`` (table order) until the ``keep`` lowest final keys are known
    exactly; returns each module's number of passes. ``finish(i, exact)`` is called once per
    module: ``exact`` False means it stopped early and its key is a lower bound. Modules in
    ``required`` (e.g. one ``finetune.module`` names) always complete. Never runs a module past
    ``steps`` passes, so never more passes than the full table. Modules in ``ineligible`` can
    never be chosen (``rift.mrc_zero_gradient``): their keys do not count toward the bar, which
    would otherwise stop a module that can be chosen on a bar set by one that cannot."""
    if keep < 1:
        raise ValueError(f"keep must be ≥ 1, got {keep}")
    keys: list[Key] = [(-math.inf, -math.inf)] * count
    passes = [0] * count
    complete: list[Key] = []

    def bar() -> Key:
        return sorted(complete)[keep - 1] if len(complete) >= keep else _NO_BAR

    # Phase A: a bound for every module.
    for index in range(count):
        for _ in range(min(screen, steps)):
            keys[index] = advance(index)
            passes[index] += 1
        if passes[index] >= steps:
            if index not in ineligible:
                complete.append(keys[index])
            finish(index, True)
        else:
            pause(index)
    # Phase B: lowest bounds first (table order among equal bounds).
    waiting = sorted((i for i in range(count) if passes[i] < steps), key=lambda i: (keys[i], i))
    for index in waiting:
        exact = True
        while passes[index] < steps:
            if index not in required and keys[index] > bar():
                exact = False
                break
            keys[index] = advance(index)
            passes[index] += 1
        if exact and index not in ineligible:
            complete.append(keys[index])
        finish(index, exact)
    return passes

"""CPU kernel warm-up before seeded work, so that reruns on the CPU give identical outputs.

The first computation of a given kernel shape in a process sometimes differs (~1e-4 relative)
on one of the CPU worker threads: 7 of 60 fresh processes rendered one half of their first
batch differently, 0 of 60 after one throw-away pass of the same shape, while throw-away passes
of *other* shapes did not help (docs/gan.md, "Reproducibility"). In a training that changes the
first step and so the whole run. Two tools:

* :func:`once` -- an inference pass (a batch shape of a frozen network): compute it once on
  throw-away input and discard it, the first time its key is seen in the process;
* :func:`rehearse` -- a training step: run it once on deep copies of the models and optimisers
  and discard them, with every random stream it touches restored, so the real first step
  finds its kernels set up and draws the same random numbers it would have drawn.

Both are for the CPU only (callers check the device) and draw no random numbers of their own.
"""

from __future__ import annotations

import copy
import random
from typing import Callable, Hashable, Iterable

import numpy as np
import torch

#: keys of the inference passes already computed once in this process
_DONE: set[Hashable] = set()


def once(key: Hashable, fn: Callable[[], object]) -> bool:
    """Call ``fn()`` and discard its result if ``key`` (e.g. the network and batch shape) was not
    seen before in this process; return whether it ran. ``fn`` must not draw random numbers."""
    if key in _DONE:
        return False
    fn()
    _DONE.add(key)
    return True


def rehearse(step: Callable[..., object], *state: object,
             generators: Iterable[torch.Generator] = ()) -> None:
    """Run ``step(*copies)`` on deep copies of ``state`` (models, optimisers, a run record...)
    and discard them.

    The copies are made in one ``deepcopy`` so an optimiser copy updates the model copy's
    parameters; ``generators`` (torch generators ``step`` draws from, directly or through the
    state) are shared, not copied, and their states restored afterwards, as are torch's global
    CPU stream, numpy's and Python's global streams. So the originals and every random stream
    are as before; only the process's kernels have seen the step's shapes.
    """
    generators = list(generators)
    memo = {id(g): g for g in generators}
    copies = copy.deepcopy(state, memo)
    saved = [g.get_state() for g in generators]
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            step(*copies)
    finally:
        for g, s in zip(generators, saved):
            g.set_state(s)
        np.random.set_state(np_state)
        random.setstate(py_state)


def call(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, key: tuple) -> torch.Tensor:
    """``net(x)``; on the CPU, the first time ``(*key, x.shape)`` is seen in the process, after
    one discarded pass of ``net`` on zeros of ``x``'s shape (``key`` names the network: an
    inference pass, no random numbers)."""
    if x.device.type == "cpu":
        once((*key, tuple(x.shape)), lambda: net(torch.zeros_like(x)))
    return net(x)

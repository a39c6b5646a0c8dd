"""The pipe between the backtest's figure processes: a value, an exception, or a child that died."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from streams.backtest.report import start_forked

fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")


def _fail(message: str) -> None:
    raise ValueError(message)


def _die() -> None:
    os._exit(3)


@fork
def test_the_value_comes_back() -> None:
    assert start_forked(sorted, [3, 1, 2], what="the drawing child")() == [1, 2, 3]


@fork
def test_the_childs_exception_is_raised_in_the_parent() -> None:
    with pytest.raises(ValueError, match="no figure"):
        start_forked(_fail, "no figure", what="the drawing child")()


@fork
def test_a_child_that_dies_before_sending_is_one_line_with_its_exit_code() -> None:
    with pytest.raises(RuntimeError, match=r"^the drawing child died \(exit 3\)$"):
        start_forked(_die, what="the drawing child")()

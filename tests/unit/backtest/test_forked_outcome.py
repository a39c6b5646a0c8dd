"""The pipe between the backtest's figure processes: a value, an exception, or a child that died."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from streams.backtest.report import receive_outcome, send_outcome

fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")


def _outcome_of(target: object, *args: object) -> object:
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(send, *args))  # type: ignore[arg-type]
    child.start()
    send.close()
    try:
        return receive_outcome(receive, child, "the drawing child")
    finally:
        receive.close()
        child.join()


def _fail(message: str) -> None:
    raise ValueError(message)


def _die(conn: object) -> None:
    os._exit(3)


@fork
def test_the_value_comes_back() -> None:
    assert _outcome_of(send_outcome, sorted, [3, 1, 2]) == [1, 2, 3]


@fork
def test_the_childs_exception_is_raised_in_the_parent() -> None:
    with pytest.raises(ValueError, match="no figure"):
        _outcome_of(send_outcome, _fail, "no figure")


@fork
def test_a_child_that_dies_before_sending_is_one_line_with_its_exit_code() -> None:
    with pytest.raises(RuntimeError, match=r"^the drawing child died \(exit 3\)$"):
        _outcome_of(_die)

from __future__ import annotations

import pytest

from onebox.data.schema import Example
from onebox.data.split import split


def rows(n: int, start: int = 0) -> list[Example]:
    return [Example(i + 1, text=f"第 {i} 条样本 example {i}") for i in range(start, start + n)]


def lines(examples: list[Example]) -> list[int]:
    return [e.line for e in examples]


def test_deterministic_and_in_input_order():
    data = rows(200)
    train, validation = split(data, 0.1, seed=1)
    again = split(data, 0.1, seed=1)
    assert (lines(train), lines(validation)) == (lines(again[0]), lines(again[1]))
    assert lines(train) == sorted(lines(train)) and lines(validation) == sorted(lines(validation))
    assert len(train) + len(validation) == 200
    assert 5 <= len(validation) <= 40


def test_adding_rows_does_not_move_existing_ones():
    base = rows(100)
    _, validation = split(base, 0.2, seed=0)
    _, validation_more = split(base + rows(100, start=100), 0.2, seed=0)
    assert set(lines(validation)) == {n for n in lines(validation_more) if n <= 100}


def test_side_depends_on_content_not_line():
    a = [Example(1, text="同一内容"), Example(2, text="另一个")]
    b = [Example(7, text="同一内容"), Example(9, text="另一个")]
    assert [e.text for e in split(a, 0.5)[1]] == [e.text for e in split(b, 0.5)[1]]


def test_seed_changes_the_split():
    data = rows(200)
    assert lines(split(data, 0.2, seed=0)[1]) != lines(split(data, 0.2, seed=1)[1])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_at_least_one_validation_row(n):
    train, validation = split(rows(n), 0.01)
    assert len(validation) >= 1 and len(train) >= 1


def test_at_least_one_train_row_with_a_large_fraction():
    train, validation = split(rows(2), 0.99)
    assert len(train) == 1 and len(validation) == 1


def test_zero_fraction_and_single_row():
    assert split(rows(10), 0.0) == (rows(10), [])
    assert split(rows(1), 0.5) == (rows(1), [])
    assert split([], 0.5) == ([], [])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError):
        split(rows(3), fraction)

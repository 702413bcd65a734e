"""Stop strings: excluded from the output, found across deltas, partial matches held then released."""

from __future__ import annotations

from onebox.serve.stops import StopMatcher


def run(stops: list[str], deltas: list[str]) -> tuple[str, bool, list[str]]:
    m = StopMatcher(stops)
    shown: list[str] = []
    stopped = False
    for d in deltas:
        out, stopped = m.feed(d)
        shown.append(out)
        if stopped:
            break
    if not stopped:
        shown.append(m.flush())
    return "".join(shown), stopped, shown


def test_stop_split_across_deltas_is_excluded() -> None:
    text, stopped, shown = run(["<|end|>"], ["Hello", " wor", "ld<|", "en", "d|> after"])
    assert (text, stopped) == ("Hello world", True)
    assert shown[2] == "ld"  # "<|" held back until resolved


def test_partial_match_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    text, stopped, shown = run(["\n\nUser:"], ["a\n", "\nUs", "e", "d it"])
    assert (text, stopped) == ("a\n\nUsed it", False)
    assert shown[0] == "a" and shown[1] == ""


def test_earliest_of_several_stops_wins_and_chinese_stop() -> None:
    assert run(["。", "END"], ["第一句。END"])[:2] == ("第一句", True)
    assert run(["END", "句"], ["第一句。END"])[:2] == ("第一", True)


def test_stop_at_start_and_held_text_flushed_at_end() -> None:
    assert run(["##"], ["##x"])[:2] == ("", True)
    assert run(["STOP"], ["ok ST"])[:2] == ("ok ST", False)
    m = StopMatcher(["x"])
    assert m.feed("axb") == ("a", True)
    assert m.feed("more") == ("", True) and m.flush() == ""
    assert StopMatcher([]).feed("anything") == ("anything", False)

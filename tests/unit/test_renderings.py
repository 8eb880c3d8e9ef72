"""LastRenderings: reuse only for the same source, bounded, newest kept."""

from __future__ import annotations

import operator

from engram.store.renderings import LastRenderings


class _Counted:
    """A render function that records what it was asked to render."""

    def __init__(self) -> None:
        self.rendered: list[object] = []

    def __call__(self, source: object) -> tuple[object, int]:
        self.rendered.append(source)
        return (source, len(self.rendered))


def test_the_same_object_is_rendered_once_and_an_equal_one_again() -> None:
    render = _Counted()
    renderings: LastRenderings[str, list[int], tuple[object, int]] = LastRenderings(render)
    source = [1, 2]
    first = renderings.get("a", source)
    assert renderings.get("a", source) is first
    equal_copy = [1, 2]
    again = renderings.get("a", equal_copy)
    assert again is not first
    assert again == (equal_copy, 2)
    assert render.rendered == [source, equal_copy]


def test_with_equality_an_equal_source_reuses_and_a_different_one_does_not() -> None:
    render = _Counted()
    renderings: LastRenderings[str, tuple[object, ...], tuple[object, int]] = LastRenderings(
        render, same=operator.eq
    )
    first = renderings.get("a", ("x", '{"n": 1}'))
    assert renderings.get("a", ("x", '{"n": 1}')) is first
    changed = renderings.get("a", ("x", '{"n": true}'))
    assert changed is not first
    assert len(render.rendered) == 2


def test_keys_are_independent() -> None:
    render = _Counted()
    renderings: LastRenderings[str, str, tuple[object, int]] = LastRenderings(render)
    source = "shared"
    assert renderings.get("a", source) is not renderings.get("b", source)
    assert len(render.rendered) == 2


def test_past_the_bound_the_key_set_longest_ago_is_forgotten() -> None:
    render = _Counted()
    renderings: LastRenderings[str, str, tuple[object, int]] = LastRenderings(render, most=2)
    a, b, c, b2 = "a-source", "b-source", "c-source", "b-changed"
    renderings.get("a", a)
    renderings.get("b", b)
    renderings.get("b", b2)  # set again: b is now the newest
    renderings.get("c", c)  # forgets a, the key set longest ago
    assert len(renderings) == 2
    kept_b = renderings.get("b", b2)
    kept_c = renderings.get("c", c)
    assert render.rendered == [a, b, b2, c]
    assert (kept_b, kept_c) == ((b2, 3), (c, 4))
    renderings.get("a", a)
    assert render.rendered[-1] is a

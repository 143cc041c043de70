"""Prompts of one request that start alike: the shared prefix is fed once and its state forked."""

from __future__ import annotations

MIN_SHARED_PREFIX = 2  # tokens worth a feed of their own


def prefix_groups(prompts: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """Prompts grouped by a shared prefix worth feeding once: (prefix, member indices), in sorted order.

    Sorted prompts put those with a common start side by side; a prompt joins the group
    before it while their common prefix keeps at least half of the group's, so one
    context with several continuations (multiple choice) shares the whole context.
    """
    groups: list[tuple[list[int], list[int]]] = []
    for index in sorted(range(len(prompts)), key=lambda i: prompts[i]):
        ids = prompts[index]
        if groups:
            prefix, members = groups[-1]
            common = _common_length(prefix, ids)
            if common >= MIN_SHARED_PREFIX and 2 * common >= len(prefix):
                groups[-1] = (prefix[:common], [*members, index])
                continue
        groups.append((ids, [index]))
    return [(prefix if len(members) > 1 else [], members) for prefix, members in groups]


def _common_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length

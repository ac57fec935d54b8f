"""PRM-guided beam search (search-and-learn ``sal/search/beam_search.py``): at every depth the kept beams are
extended ``n // width`` ways each (``n`` at the first depth, from the question alone), every partial answer
is scored, finished ones leave the beam, and the ``width`` best unfinished ones (by the config's aggregate,
duplicates dropped) are kept."""

from __future__ import annotations

from collections.abc import Sequence

from vlmeval_prm.search.base import Expander, ExpansionLog, Node, Scorer, SearchConfig, SearchResult, StepPolicy


def top(nodes: Sequence[Node], width: int, aggregate: str, filter_duplicates: bool) -> list[Node]:
    """The ``width`` best scored nodes, in order (ties keep the earlier node); unscored ones never kept."""
    seen, ranked = set(), []
    for node in sorted((n for n in nodes if n.value(aggregate) is not None), key=lambda n: -n.value(aggregate)):
        key = tuple(node.steps)
        if filter_duplicates and key in seen:
            continue
        seen.add(key)
        ranked.append(node)
    return ranked[:width]


def beam(
    question: str, images: Sequence[str], policy: StepPolicy, scorer: Scorer, config: SearchConfig, log: ExpansionLog
) -> SearchResult:
    expander = Expander(question, images, policy, scorer, log)
    beams, finished, events = [Node([])], [], []
    depth = 0
    for depth in range(1, config.iterations + 1):
        per_beam = config.n if depth == 1 else config.n // config.width
        children = [c for group in expander.expand(beams, per_beam) for c in group]
        expander.score(children)
        done = [c for c in children if c.finished]
        kept = top([c for c in children if not c.finished], config.width, config.aggregate, config.filter_duplicates)
        events.append({"depth": depth, "candidates": children, "kept": kept, "finished": done})
        finished += done
        beams = kept
        if not beams or len(finished) >= config.n:
            break
    return SearchResult(finished=finished, compute=expander.compute, depth=depth, events=events)

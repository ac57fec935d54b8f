"""Diverse verifier tree search (search-and-learn ``sal/search/diverse_verifier_tree_search.py``): the budget
``n`` is split into ``width`` independent subtrees, each started from its own first step; at every depth each
subtree's one beam is extended ``n // width`` ways and the best child by the PRM is kept (greedy), until it
finishes."""

from __future__ import annotations

from collections.abc import Sequence

from vlmeval_prm.search.base import Expander, ExpansionLog, Node, Scorer, SearchConfig, SearchResult, StepPolicy
from vlmeval_prm.search.beam import top


def dvts(
    question: str, images: Sequence[str], policy: StepPolicy, scorer: Scorer, config: SearchConfig, log: ExpansionLog
) -> SearchResult:
    expander = Expander(question, images, policy, scorer, log)
    per_tree = config.n // config.width
    (roots,) = expander.expand([Node([])], config.width)  # one distinct first step per subtree
    expander.score(roots)
    finished = [r for r in roots if r.finished]
    trees = [r for r in roots if not r.finished and r.value(config.aggregate) is not None]
    events = [{"depth": 1, "candidates": roots, "kept": trees, "finished": list(finished)}]
    depth = 1
    for depth in range(2, config.iterations + 1):
        if not trees:
            break
        groups = expander.expand(trees, per_tree)
        expander.score([c for g in groups for c in g])
        kept = []
        for group in groups:
            finished += [c for c in group if c.finished]
            best = top(group, 1, config.aggregate, config.filter_duplicates)
            if best and not best[0].finished:
                kept.append(best[0])
        events.append({"depth": depth, "candidates": [c for g in groups for c in g], "kept": kept})
        trees = kept
    return SearchResult(finished=finished, compute=expander.compute, depth=depth, events=events)

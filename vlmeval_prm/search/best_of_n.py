"""Best-of-N in the search seam (search-and-learn ``sal/search/best_of_n.py``): ``n`` answers sampled
independently, one step at a time, scored once finished; the best by the config's aggregate is the answer.
Equal in budget to ``-BoN<N>`` (which samples whole answers through VLMEvalKit and keeps its own names and
store): here for comparing search methods on the same step policy and compute counts."""

from __future__ import annotations

from collections.abc import Sequence

from vlmeval_prm.search.base import Expander, ExpansionLog, Node, Scorer, SearchConfig, SearchResult, StepPolicy


def best_of_n(
    question: str, images: Sequence[str], policy: StepPolicy, scorer: Scorer, config: SearchConfig, log: ExpansionLog
) -> SearchResult:
    expander = Expander(question, images, policy, scorer, log)
    (nodes,) = expander.expand([Node([])], config.n)
    for _ in range(config.iterations - 1):
        open_ = [i for i, node in enumerate(nodes) if not node.finished]
        if not open_:
            break
        for i, (child,) in zip(open_, expander.expand([nodes[i] for i in open_], 1)):
            nodes[i] = child
    finished = [n for n in nodes if n.finished]
    expander.score(finished)
    depth = max(len(n.steps) for n in nodes)
    return SearchResult(finished=finished, compute=expander.compute, depth=depth, events=[])

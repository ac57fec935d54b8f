"""What every search method is written over: a policy that extends partial answers by one step, the scorer
(the PRM interface: step scores per candidate), the tree's records, and the compute each one costs.

A search method (``best_of_n``, ``beam``, ``dvts``) is one short function ``(question, images, policy, scorer,
config, log) -> SearchResult``. Every expansion it makes goes through ``Expander``: asked for the k
continuations of a prefix, it replays them from the ``ExpansionLog`` when a killed search stored them, else
asks the policy and appends them to the log as they come (a resumed search re-generates nothing it kept).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vlmeval_prm.select.aggregate import response_score


@dataclass(frozen=True)
class Extension:
    """One continuation of a prefix by one step: its text (delimiter included), whether the answer ended
    there, and what it cost (tokens generated; prompt tokens the policy read for it)."""

    text: str
    finished: bool
    tokens: int = 0
    prompt_tokens: int = 0


class StepPolicy(Protocol):
    def extend(
        self, question: str, images: Sequence[str], prefixes: Sequence[Sequence[str]], k: int
    ) -> list[list[Extension]]:
        """For each prefix (the steps so far), ``k`` sampled next steps."""


class Scorer(Protocol):
    def score(self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]], mode: str = "step"):
        """Per candidate, a ``StepScores`` (``prm.base``)."""


@dataclass(frozen=True)
class SearchConfig:
    """search-and-learn's parameters (``sal/config.py``): ``n`` completions per depth (the generation
    budget), ``width`` beams kept per depth (beam search; each kept beam is extended ``n // width`` ways) or
    subtrees (DVTS), ``iterations`` the maximum depth, ``lookahead`` 0 (none), duplicate filtering, and the
    aggregate a partial answer is ranked by (``last``: its last step's score, as search-and-learn scores)."""

    n: int = 8
    width: int = 2
    iterations: int = 40
    lookahead: int = 0
    filter_duplicates: bool = True
    aggregate: str = "last"

    def __post_init__(self):
        if self.n < 1 or self.width < 1 or self.n % self.width:
            raise ValueError(f"n must be a positive multiple of width, got n={self.n}, width={self.width}")
        if self.iterations < 1 or self.lookahead != 0:
            raise ValueError("iterations must be >= 1; lookahead other than 0 is not implemented")


@dataclass
class Node:
    """A partial (or finished) answer: its steps, their scores, and its place in the tree."""

    steps: list[str]
    finished: bool = False
    scores: list[float] | None = None
    error: str | None = None

    def value(self, aggregate: str) -> float | None:
        return response_score(self.scores, aggregate)


@dataclass
class Compute:
    """What a search cost: tokens the policy generated and read, requests, and PRM sequences scored."""

    generated_tokens: int = 0
    prompt_tokens: int = 0
    policy_calls: int = 0
    prm_sequences: int = 0

    def add(self, ext: Extension) -> None:
        self.generated_tokens += ext.tokens
        self.prompt_tokens += ext.prompt_tokens


@dataclass(frozen=True)
class Expansion:
    """One recorded expansion: the prefix's key, the continuations, and (after scoring) which were kept."""

    prefix: str
    extensions: tuple[Extension, ...]


def prefix_key(steps: Sequence[str]) -> str:
    return hashlib.sha256("\x1e".join(steps).encode("utf-8", "surrogatepass")).hexdigest()[:16]


class ExpansionLog:
    """The expansions a search made, keyed by prefix; ``on_append`` stores each as it is made (e.g. a line of
    the candidate store), so a killed search resumes from what it had."""

    def __init__(self, stored: Sequence[Expansion] = (), on_append: Callable[[Expansion], None] | None = None):
        self.by_prefix = {e.prefix: e for e in stored}
        self.on_append = on_append

    def get(self, steps: Sequence[str], k: int) -> Expansion | None:
        found = self.by_prefix.get(prefix_key(steps))
        return found if found is not None and len(found.extensions) >= k else None

    def add(self, steps: Sequence[str], extensions: Sequence[Extension]) -> Expansion:
        record = Expansion(prefix_key(steps), tuple(extensions))
        self.by_prefix[record.prefix] = record
        if self.on_append is not None:
            self.on_append(record)
        return record


@dataclass
class SearchResult:
    """The finished answers (best first by the config's aggregate), every node scored, and the compute."""

    finished: list[Node]
    compute: Compute
    depth: int
    events: list[dict] = field(default_factory=list)  # per depth: the candidates and which were kept

    def best(self, aggregate: str) -> Node | None:
        scored = [n for n in self.finished if n.value(aggregate) is not None]
        return max(scored, key=lambda n: n.value(aggregate)) if scored else None


class Expander:
    """Expansions through the log (replayed when stored) and the policy (else), scored by the scorer; the
    compute of what was generated now and of every scoring is counted."""

    def __init__(self, question: str, images: Sequence[str], policy: StepPolicy, scorer: Scorer, log: ExpansionLog):
        self.question, self.images = question, list(images)
        self.policy, self.scorer, self.log = policy, scorer, log
        self.compute = Compute()

    def expand(self, nodes: Sequence[Node], k: int) -> list[list[Node]]:
        """``k`` children per node (one step more each)."""
        todo = [i for i, node in enumerate(nodes) if self.log.get(node.steps, k) is None]
        if todo:
            fresh = self.policy.extend(self.question, self.images, [nodes[i].steps for i in todo], k)
            self.compute.policy_calls += 1
            for i, exts in zip(todo, fresh):
                for ext in exts:
                    self.compute.add(ext)
                self.log.add(nodes[i].steps, exts)
        out = []
        for node in nodes:
            exts = self.log.get(node.steps, k).extensions[:k]
            out.append([Node([*node.steps, e.text], finished=e.finished) for e in exts])
        return out

    def score(self, nodes: Sequence[Node]) -> None:
        """Step scores for every node (a failed one keeps its error and no scores: never a default value)."""
        if not nodes:
            return
        results = self.scorer.score(self.question, self.images, [n.steps for n in nodes])
        self.compute.prm_sequences += len(nodes)
        for node, res in zip(nodes, results):
            node.scores, node.error = (res.scores, None) if res.ok else (None, res.error or "no scores")

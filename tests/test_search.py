"""The search seam (``vlmeval_prm.search``) on a scripted step policy and a scripted scorer: beam search's pruning
against a brute-force expansion of the same tree, DVTS's independent greedy subtrees, Best-of-N, resuming
from a stored expansion log, and the compute counts against what the scripted policy and scorer saw."""

import hashlib

import pytest

from vlmeval_prm.prm.base import StepScores
from vlmeval_prm.search import SearchConfig, search_method
from vlmeval_prm.search.base import ExpansionLog, Extension

DEPTH = 4  # every answer ends by this step


def h(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest(), 16)


def step_text(prefix: tuple, j: int) -> str:
    """Sample j after ``prefix``; where the hash says so, sample 1 repeats sample 0 (a duplicate)."""
    if j == 1 and h(prefix, "dup") % 4 == 0:
        j = 0
    return f"step{len(prefix) + 1}-{h(prefix, j) % 1000}\n\n"


def is_finished(prefix: tuple, text: str) -> bool:
    depth = len(prefix) + 1
    return depth >= DEPTH or (depth >= 2 and h(prefix, text, "end") % 5 == 0)


def value(steps: tuple) -> float:
    """The scripted PRM's score of the last step of ``steps``."""
    return (h(steps, "score") % 997) / 997


class ScriptedPolicy:
    def __init__(self):
        self.calls, self.generated, self.expanded = 0, 0, []

    def extend(self, question, images, prefixes, k):
        self.calls += 1
        out = []
        for prefix in prefixes:
            prefix = tuple(prefix)
            self.expanded.append((prefix, k))
            exts = []
            for j in range(k):
                text = step_text(prefix, j)
                tokens = 3 + h(text) % 5
                self.generated += tokens
                exts.append(Extension(text, is_finished(prefix, text), tokens, prompt_tokens=10 + 4 * len(prefix)))
            out.append(exts)
        return out


class ScriptedScorer:
    def __init__(self):
        self.sequences = 0

    def score(self, question, images, candidates, mode="step"):
        self.sequences += len(candidates)
        return [StepScores(steps=list(c), scores=[value(tuple(c[: i + 1])) for i in range(len(c))]) for c in candidates]


def run(method, config, log=None):
    policy, scorer = ScriptedPolicy(), ScriptedScorer()
    result = search_method(method)("Q?", [], policy, scorer, config, log or ExpansionLog())
    return result, policy, scorer


@pytest.mark.parametrize("n, width", [(8, 2), (6, 3), (4, 4)])
def test_beam_keeps_the_top_width_at_every_depth_of_a_brute_force_expansion(n, width):
    config = SearchConfig(n=n, width=width, iterations=DEPTH)
    result, policy, _ = run("beam", config)
    frontier = [()]
    for depth, event in enumerate(result.events, 1):
        k = n if depth == 1 else n // width
        children = [(*p, step_text(p, j)) for p in frontier for j in range(k)]  # the whole level, expanded here
        assert [tuple(c.steps) for c in event["candidates"]] == children
        open_ = []
        for child in children:
            if not is_finished(child[:-1], child[-1]) and child not in open_:
                open_.append(child)
        expected = sorted(open_, key=lambda c: -value(c))[:width]
        kept = [tuple(c.steps) for c in event["kept"]]
        assert kept == expected, depth
        pruned = [c for c in open_ if c not in kept]
        assert all(value(a) >= value(b) for a in kept for b in pruned)
        frontier = expected
    assert result.finished and all(node.finished for node in result.finished)
    assert result.best("last").value("last") == max(node.value("last") for node in result.finished)


def test_dvts_grows_width_independent_subtrees_greedily():
    config = SearchConfig(n=8, width=4, iterations=DEPTH)
    result, _, _ = run("dvts", config)
    roots = [tuple(c.steps) for c in result.events[0]["candidates"]]
    assert roots == [(step_text((), j),) for j in range(4)]
    for event in result.events[1:]:
        for kept in event["kept"]:
            parent = tuple(kept.steps[:-1])
            siblings = [(*parent, step_text(parent, j)) for j in range(config.n // config.width)]
            assert value(tuple(kept.steps)) == max(value(s) for s in siblings)  # the best child of its subtree
    subtrees = {node.steps[0] for node in result.finished}
    assert subtrees <= {r[0] for r in roots}


def test_best_of_n_samples_n_independent_answers():
    result, policy, scorer = run("best_of_n", SearchConfig(n=6, width=1, iterations=DEPTH))
    assert len(result.finished) == 6 and scorer.sequences == 6
    assert [node.steps[0] for node in result.finished] == [step_text((), j) for j in range(6)]


@pytest.mark.parametrize("method", ["beam", "dvts", "best_of_n"])
def test_compute_counts_are_what_the_policy_and_scorer_saw(method):
    result, policy, scorer = run(method, SearchConfig(n=8, width=2, iterations=DEPTH))
    assert result.compute.generated_tokens == policy.generated > 0
    assert result.compute.policy_calls == policy.calls
    assert result.compute.prm_sequences == scorer.sequences
    assert result.compute.prompt_tokens == sum((10 + 4 * len(p)) * k for p, k in policy.expanded)


@pytest.mark.parametrize("method", ["beam", "dvts"])
def test_a_killed_search_resumes_from_its_log_without_regenerating(method):
    config = SearchConfig(n=8, width=2, iterations=DEPTH)
    stored = []
    full, policy, _ = run(method, config, ExpansionLog(on_append=stored.append))
    assert len(stored) == len(policy.expanded)
    # killed after half its expansions: the resumed search asks the policy only for the rest
    half = len(stored) // 2
    resumed, again, _ = run(method, config, ExpansionLog(stored[:half]))
    assert [tuple(n.steps) for n in resumed.finished] == [tuple(n.steps) for n in full.finished]
    assert len(again.expanded) == len(stored) - half
    assert resumed.compute.generated_tokens == again.generated < full.compute.generated_tokens
    replayed, idle, _ = run(method, config, ExpansionLog(stored))
    assert idle.calls == 0 and [n.scores for n in replayed.finished] == [n.scores for n in full.finished]


def test_bad_configs_and_names_are_refused():
    with pytest.raises(ValueError, match="multiple of width"):
        SearchConfig(n=6, width=4)
    with pytest.raises(ValueError, match="unknown search method 'mcts'; registered: beam, best_of_n, dvts"):
        search_method("mcts")


def test_a_policy_that_cannot_continue_a_prefix_is_refused_by_name():
    """VLMEvalKit's own local wrappers generate whole answers inside their code: search refuses them, naming the
    class and the way out; an unknown method fails when the model is built."""
    from vlmeval.vlm import InternVLChat

    from vlmeval_prm.host.search_model import PRMSearch
    from vlmeval_prm.policy.step_extension import refusal

    assert "InternVLChat cannot continue a partial answer" in refusal(InternVLChat) and "-BoN<N>" in refusal(
        InternVLChat
    )
    api = {"class": "GPT4V", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1/chat/completions", "key": "k"}
    with pytest.raises(ValueError, match="unknown search method 'mcts'"):
        PRMSearch(model=api, method="mcts", prm="transformers:tiny:prm")


def test_a_step_cut_by_the_token_limit_does_not_end_the_answer(tiny_paths):
    """TransformersChat's step extension (the tiny policy, 2 tokens per step at most): a continuation that hit the
    limit without the delimiter is an unfinished step, never an answer."""
    from vlmeval_prm.policy.step_extension import step_policy_for
    from vlmeval_prm.policy.transformers_chat import TransformersChat

    policy = step_policy_for(TransformersChat("tiny:policy"), temperature=1.0, top_p=1.0, max_step_tokens=2)
    (exts,) = policy.extend("How many dots?", [], [[]], 6)
    assert len(exts) == 6 and all(e.tokens <= 2 for e in exts)
    cut = [e for e in exts if e.tokens == 2 and "\n\n" not in e.text]
    assert cut and not any(e.finished for e in cut)
    assert all(e.finished == ("\n\n" not in e.text and e.tokens < 2) for e in exts)

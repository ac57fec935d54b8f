"""The LMDeploy HTTP PRM against LMDeploy's own api_server code, with parity to the in-process PRM.

No GPU here, so LMDeploy's model engine is replaced by a CPU stand-in running the same tiny PRM
with transformers (``standins.lmdeploy_standin``); router, validation, sessions,
multimodal preprocessing and error bodies are LMDeploy 0.18's. The tiny PRM has random weights:
"+" and "-" rank near 100th at every step, so the chat fallback (top 20 at most) cannot see them.
Parity in that mode uses a copy with both label logits raised by the same constant, which leaves
P(+) unchanged and puts the labels on top, as in a trained PRM.
"""

import base64
import logging
import math

import httpx
import pytest
from PIL import Image

pytest.importorskip("lmdeploy")

from standins.lmdeploy_standin import label_boosted_copy, serve_standin  # noqa: E402
from vlmeval_prm.prm import build_scorer  # noqa: E402
from vlmeval_prm.prm.hf_backend import TransformersPRM  # noqa: E402
from vlmeval_prm.prm.lmdeploy_backend import (  # noqa: E402
    IMAGE_TOKEN,
    LMDeployPRM,
    image_data_url,
    merge_chat_logprobs,
    two_way,
)
from vlmeval_prm.tiny import ATTN_IMPLEMENTATION  # noqa: E402

QUESTION = "How many circles are there?"
CANDIDATES = [
    ["There are two circles.", "Two plus one is three.", "Answer: C"],
    ["The shape is red."],
    [],  # no steps: a recorded failure, never a request
    ["step one ü ∑", "x = 3\nso y = 4", "The answer is B"],
    [f"step {i}" for i in range(7)],
]
TOL = 1e-4


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    png, jpg = root / "shape.png", root / "photo.jpg"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(png)
    Image.new("RGB", (40, 64), (10, 120, 220)).save(jpg, quality=80)
    return [str(png), str(jpg)]


@pytest.fixture(scope="module")
def labelled(tiny_paths, tmp_path_factory):
    """The tiny PRM with "+" and "-" raised alike: same P(+), labels at the top."""
    return label_boosted_copy(tiny_paths["prm"], str(tmp_path_factory.mktemp("labelled")), {"+": 8.0, "-": 8.0})


@pytest.fixture(scope="module")
def reference(labelled, images):
    prm = TransformersPRM(labelled, attn_implementation=ATTN_IMPLEMENTATION)
    return prm, prm.score(QUESTION, images, CANDIDATES)


@pytest.fixture(scope="module")
def pytorch_server(labelled):
    with serve_standin(labelled, model_name="tiny-prm") as server:
        yield server


@pytest.fixture(scope="module")
def turbomind_server(labelled):
    with serve_standin(labelled, model_name="tiny-prm", engine="turbomind") as server:
        yield server


def assert_parity(expected, got):
    for ref, res in zip(expected, got, strict=True):
        if not ref.ok:  # the empty-step candidate fails in both
            assert not res.ok
            continue
        assert res.ok, res.error
        assert res.bounds is None
        assert len(res.scores) == len(ref.scores)
        assert max(abs(a - b) for a, b in zip(ref.scores, res.scores)) < TOL


def score_and_count(server, prm, images):
    """Score CANDIDATES once; (results, scored ones, /generate requests the server saw for it)."""
    try:
        before = server.stats.requests["/generate"]
        got = prm.score(QUESTION, images, CANDIDATES)
    finally:
        prm.close()
    return got, [r for r in got if r.ok], server.stats.requests["/generate"] - before


def test_generate_mode_is_detected_and_matches_in_process(pytorch_server, reference, images, caplog):
    caplog.set_level(logging.INFO, logger="vlmeval.vlmeval_prm")
    prm = build_scorer(f"lmdeploy:{pytorch_server.url}")
    assert prm.mode == "generate" and prm.identity == "lmdeploy:tiny-prm@generate"
    assert "one /generate request per candidate" in caplog.text
    got, ok, requests = score_and_count(pytorch_server, prm, images)
    assert_parity(reference[1], got)
    assert requests == len(ok)
    assert all(r.meta["requests"] == 1 and r.meta["logprob_rows"] == r.meta["prompt_tokens"] - 1 for r in ok)


def test_skipping_the_shared_prefix_rows_changes_no_score(pytorch_server, reference, images):
    got, ok, requests = score_and_count(pytorch_server, LMDeployPRM(pytorch_server.url, skip_prefix_rows=True), images)
    assert_parity(reference[1], got)
    assert requests == len(ok) + 1  # + the shared prefix's
    system_and_images = 40  # the system turn alone is longer than this
    assert all(r.meta["logprob_rows"] < r.meta["prompt_tokens"] - system_and_images for r in ok)


def test_chat_fallback_matches_in_process(pytorch_server, reference, images):
    prm = LMDeployPRM(pytorch_server.url, mode="chat")
    try:
        assert prm.identity == "lmdeploy:tiny-prm@chat"
        got = prm.score(QUESTION, images, CANDIDATES)
    finally:
        prm.close()
    assert_parity(reference[1], got)
    for steps, res in zip(CANDIDATES, got):
        if res.ok:
            assert res.meta["requests"] == len(steps)


def test_turbomind_server_gets_the_fallback(turbomind_server, reference, images, caplog):
    """LMDeploy refuses prompt logprobs on TurboMind (400); the probe then picks the chat fallback."""
    caplog.set_level(logging.INFO, logger="vlmeval.vlmeval_prm")
    prm = LMDeployPRM(turbomind_server.url)
    try:
        assert prm.mode == "chat"
        assert "supported only by the PyTorch hybrid engine" in caplog.text
        assert_parity(reference[1], prm.score(QUESTION, images, CANDIDATES))
    finally:
        prm.close()


def test_mixed_servers_score_in_the_mode_all_support(pytorch_server, turbomind_server, reference, images):
    prm = LMDeployPRM(f"{pytorch_server.url}, {turbomind_server.url}")
    try:
        assert prm.mode == "chat"  # the mode every server can serve
        got = prm.score(QUESTION, images, CANDIDATES)
    finally:
        prm.close()
    assert_parity(reference[1], got)
    used = [url for r in got if r.ok for url in r.meta["servers"]]
    assert set(used) == {pytorch_server.url, turbomind_server.url}  # both carry requests


def test_outcome_mode_scores_the_whole_response_as_one_step(pytorch_server, reference, images):
    hf = reference[0]
    prm = LMDeployPRM(pytorch_server.url)
    try:
        got = prm.score(QUESTION, images, CANDIDATES[:1], mode="outcome")[0]
    finally:
        prm.close()
    want = hf.score(QUESTION, images, CANDIDATES[:1], mode="outcome")[0]
    assert got.steps == ["\n\n".join(CANDIDATES[0])] and len(got.scores) == 1
    assert abs(got.scores[0] - want.scores[0]) < TOL


def test_client_prompt_is_the_models_own_chat_template_token_for_token(pytorch_server, reference, images):
    """What /generate tokenizes (images expanded by LMDeploy) equals what the HF processor builds."""
    hf = reference[0]
    steps = CANDIDATES[0]
    prompt = hf.fmt.render(QUESTION, steps, len(images), image=IMAGE_TOKEN + "\n")
    assert prompt.replace(IMAGE_TOKEN, "<IMG_CONTEXT>") == hf.render(QUESTION, steps, len(images))
    resp = httpx.post(
        f"{pytorch_server.url}/generate",
        timeout=30,
        json={
            "prompt": prompt,
            "image_data": [image_data_url(p) for p in images],
            "max_tokens": 0,
            "return_logprob": True,
            "logprob_start_len": 0,
        },
    )
    served = [tok for _, tok in resp.json()["meta_info"]["input_token_logprobs"]]
    pil = [Image.open(p).convert("RGB") for p in images]
    expected = hf.inputs.processor(text=[hf.render(QUESTION, steps, len(images))], images=[pil])["input_ids"][0]
    assert served == expected[1:]  # row j predicts token j + 1


def test_images_travel_as_their_original_bytes(images):
    for path in images:
        url = image_data_url(path)
        head, data = url.split(",", 1)
        assert head == ("data:image/png;base64" if path.endswith(".png") else "data:image/jpeg;base64")
        with open(path, "rb") as f:
            assert base64.b64decode(data) == f.read()


@pytest.fixture(scope="module")
def plain_server(tiny_paths):
    with serve_standin(tiny_paths["prm"], model_name="tiny-prm") as server:
        yield server


def test_standin_fans_out_chat_samples_with_logprobs(plain_server, images):
    """The stand-in serves sampling too (n > 1 is LMDeploy's own fan-out), e.g. for a policy."""
    content = [
        {"type": "image_url", "image_url": {"url": image_data_url(images[0])}},
        {"type": "text", "text": "Describe."},
    ]
    resp = httpx.post(
        f"{plain_server.url}/v1/chat/completions",
        timeout=30,
        json={
            "model": "tiny-prm",
            "n": 3,
            "max_tokens": 4,
            "logprobs": True,
            "top_logprobs": 2,
            "seed": 7,
            "messages": [{"role": "user", "content": content}],
        },
    )
    body = resp.json()
    assert resp.status_code == 200 and len(body["choices"]) == 3
    for choice in body["choices"]:
        content = choice["logprobs"]["content"]
        assert 1 <= len(content) <= 4 and all(len(c["top_logprobs"]) <= 2 for c in content)


def test_missing_label_in_generate_mode_gives_a_lower_bound(plain_server, tiny_paths, images):
    """With the plain tiny PRM "-" is outside the top 20: P(+) is only bounded from below."""
    hf = TransformersPRM(tiny_paths["prm"], attn_implementation=ATTN_IMPLEMENTATION)
    vocab = hf.model.config.text_config.vocab_size
    exact = LMDeployPRM(plain_server.url, top_logprobs=vocab)  # the whole vocabulary: every label seen
    bounded = LMDeployPRM(plain_server.url)
    try:
        truth = exact.score(QUESTION, images, CANDIDATES[:2])
        got = bounded.score(QUESTION, images, CANDIDATES[:2])
    finally:
        exact.close()
        bounded.close()
    assert_parity(hf.score(QUESTION, images, CANDIDATES[:2]), truth)
    for t, g in zip(truth, got):
        assert g.bounds == ["lower"] * len(g.steps) and g.meta["bounded_steps"] == len(g.steps)
        assert all(b <= v + 1e-9 for b, v in zip(g.scores, t.scores))


def test_chat_fallback_never_invents_a_score(plain_server, images):
    prm = LMDeployPRM(plain_server.url, mode="chat")
    try:
        got = prm.score(QUESTION, images, CANDIDATES[:2])
    finally:
        prm.close()
    for res in got:
        assert res.scores is None and "neither '+' nor '-'" in res.error


def test_chat_fallback_records_a_bound_when_one_label_is_missing(tiny_paths, tmp_path, images):
    only_plus = label_boosted_copy(tiny_paths["prm"], str(tmp_path / "plus"), {"+": 8.0})
    truth = TransformersPRM(only_plus, attn_implementation=ATTN_IMPLEMENTATION).score(QUESTION, images, CANDIDATES[:2])
    with serve_standin(only_plus, model_name="plus") as server:
        prm = LMDeployPRM(server.url, mode="chat")
        try:
            got = prm.score(QUESTION, images, CANDIDATES[:2])
        finally:
            prm.close()
    for t, g in zip(truth, got):
        assert g.ok and g.bounds == ["lower"] * len(g.steps)
        assert all(b <= v + 1e-9 for b, v in zip(g.scores, t.scores))


# -- the pure pieces ---------------------------------------------------------------------------


def test_two_way_is_the_two_label_softmax_or_an_honest_bound():
    value, bound = two_way(-0.1, -2.5, cutoff=-3.0)
    assert bound is None and value == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.5)))
    low, kind = two_way(-1.0, None, cutoff=-4.0)  # lp(-) <= -4  =>  P(+) >= sigmoid(3)
    assert kind == "lower" and low == pytest.approx(1 / (1 + math.exp(-3)))
    high, kind = two_way(None, -1.0, cutoff=-4.0)
    assert kind == "upper" and high == pytest.approx(1 / (1 + math.exp(3)))
    assert two_way(None, None, cutoff=-4.0) is None
    assert two_way(0.0, -1000.0, cutoff=-2000.0)[0] == 1.0 and two_way(-1000.0, 0.0, cutoff=-2000.0)[0] == 0.0


def test_merge_counts_the_sampled_token_only_when_it_is_one_of_the_top_k():
    def entry(token, lp, tops):
        return {"token": token, "logprob": lp, "top_logprobs": [{"token": t, "logprob": v} for t, v in tops]}

    # list one short of k: the sampled token is among the top-k, and may be the lowest of them
    reported, cutoff = merge_chat_logprobs(entry("-", -3.0, [("+", -0.5), ("a", -1.0)]), k=3)
    assert reported == {"+": -0.5, "a": -1.0, "-": -3.0} and cutoff == -3.0
    # a full list: the sampled token lies below the top-k and says nothing about the cutoff
    reported, cutoff = merge_chat_logprobs(entry("z", -9.0, [("+", -0.5), ("a", -1.0), ("b", -2.0)]), k=3)
    assert reported["z"] == -9.0 and cutoff == -2.0

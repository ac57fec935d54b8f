"""A policy served by LMDeploy (VLMEvalKit's real ``LMDeployAPI``) against LMDeploy's own router with a
CPU stand-in engine on the tiny policy: N sampled candidates cost ONE chat request (``n=N``)."""

import pytest
from PIL import Image

pytest.importorskip("lmdeploy")

import vlmeval.api  # noqa: E402

from standins.lmdeploy_standin import serve_standin  # noqa: E402
from vlmeval_prm.policy.base import SamplingConfig, get_adapter  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_paths):
    with serve_standin(tiny_paths["policy"], model_name="tiny-policy") as s:
        yield s


def test_n_candidates_in_one_request(server, tmp_path):
    image = tmp_path / "i.png"
    Image.new("RGB", (50, 50), "red").save(image)
    model = vlmeval.api.LMDeployAPI(
        model="tiny-policy", api_base=f"{server.url}/v1/chat/completions", key="sk-test", retry=1, verbose=False
    )
    before = server.stats.requests["/v1/chat/completions"]
    message = [{"type": "image", "value": str(image)}, {"type": "text", "value": "How many circles?"}]
    out = get_adapter(model).sample(model, message, None, 4, SamplingConfig(max_new_tokens=12), greedy_first=True)
    assert len(out) == 4 and all(s.ok for s in out)
    assert out[0].settings["temperature"] == 0.0 and all(s.settings["temperature"] == 0.7 for s in out[1:])
    # one request for the greedy candidate, ONE for the three sampled ones
    assert server.stats.requests["/v1/chat/completions"] - before == 2
    assert len({s.text for s in out[1:]}) > 1  # really sampled

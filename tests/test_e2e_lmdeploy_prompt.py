"""What VisualPRM-8B would receive from LMDeploy, byte for byte, through ``python -m vlmeval.run``.

A real ``vlmeval.run`` Best-of-N run scores with a PRM served by LMDeploy 0.18's own api_server
(CPU stand-in engine on the tiny PRM, since LMDeploy has no CPU engine); the stand-in records every
inference request body. Each scoring request must carry InternVL's ``PRM_SYSTEM_PROMPT`` as the system
turn and the first user turn ``### Question:\\n<image>\\n{question}\\n\\n### Solution Process:\\n{step_1}``
(the image right after ``### Question:\\n``), then one user turn per step and "+" after each, as
VisualPRM-8B was trained (InternVL ``visualprm_data_pipeline_postprocess.py``, ``item2conv_prm``).
The expected texts are written out here from the stored questions and steps, not by the plugin's
renderer. Generate mode sends the rendered prompt to ``/generate``; chat mode sends OpenAI messages.
"""

import base64
import json
import mimetypes

import pytest
from test_e2e_bon import N, store_file, vlmeval_run

from vlmeval_prm.constants import OPTIONS_ENV, SPEC_ENV
from vlmeval_prm.prm.formats.visualprm import PRM_SYSTEM_PROMPT  # pinned by test_conversation.py

pytestmark = pytest.mark.e2e
pytest.importorskip("lmdeploy")


def store_lines(work):
    with open(store_file(work), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scored(work, spec):
    """(question, image paths, steps) of every candidate the PRM ``spec`` scored step by step."""
    lines = store_lines(work)
    samples = {r["key"]: r for r in lines if r["kind"] == "sample"}
    return [
        (samples[r["key"]]["question"], samples[r["key"]]["images"], r["steps"])
        for r in lines
        if r["kind"] == "score" and r["prm"] == spec and r.get("mode", "step") == "step" and r["steps"]
    ]


def data_url(path):
    with open(path, "rb") as f:
        return f"data:{mimetypes.guess_type(path)[0]};base64,{base64.b64encode(f.read()).decode()}"


def expected_generate_prompt(question, steps):
    text = (
        f"<|im_start|>system\n{PRM_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n### Question:\n<IMAGE_TOKEN>\n{question}\n\n"
        f"### Solution Process:\n{steps[0]}<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n"
    )
    for step in steps[1:]:
        text += f"<|im_start|>user\n{step}<|im_end|>\n<|im_start|>assistant\n+<|im_end|>\n"
    return text


def expected_chat_messages(question, image, steps, k):
    """The conversation up to step k's user turn (the server adds the assistant header)."""
    messages = [
        {"role": "system", "content": PRM_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "### Question:\n"},
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": f"{question}\n\n### Solution Process:\n{steps[0]}"},
            ],
        },
    ]
    for step in steps[1 : k + 1]:
        messages += [{"role": "assistant", "content": "+"}, {"role": "user", "content": step}]
    return messages


@pytest.fixture(scope="module")
def labelled(tiny_paths, tmp_path_factory):
    from standins.lmdeploy_standin import label_boosted_copy

    return label_boosted_copy(tiny_paths["prm"], str(tmp_path_factory.mktemp("prm")), {"+": 8.0, "-": 8.0})


@pytest.fixture(scope="module")
def generate_run(labelled, tmp_path_factory):
    """A full Best-of-N run (sampling included) whose PRM is served in generate mode."""
    from standins.lmdeploy_standin import serve_standin

    work = tmp_path_factory.mktemp("generate")
    with serve_standin(labelled, record_bodies=True) as server:
        spec = f"lmdeploy:{server.url}"
        env = {SPEC_ENV: spec, OPTIONS_ENV: ""}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            vlmeval_run(work, work / "c.jsonl")
        bodies = list(server.stats.bodies)
    return work, spec, bodies


def test_generate_mode_requests_are_visualprms_training_format(generate_run):
    work, spec, bodies = generate_run
    candidates = scored(work, spec)
    assert len(candidates) > N  # every row scored, most candidates with steps
    scoring = [b for path, b in bodies if path == "/generate" and "### Question" in b.get("prompt", "")]
    got = sorted((b["prompt"], tuple(b.get("image_data") or [])) for b in scoring)
    want = sorted(
        (expected_generate_prompt(q, steps), tuple(data_url(p) for p in images)) for q, images, steps in candidates
    )
    assert got == want  # byte for byte, each candidate exactly once
    assert all(len(images) == 1 for _, images, _ in candidates)  # the mini set has one image per row


def test_chat_mode_requests_are_visualprms_training_format(generate_run, labelled, tmp_path):
    """Chat mode, resuming the candidates of the generate run (only the PRM differs)."""
    from standins.lmdeploy_standin import serve_standin

    src, _, _ = generate_run
    work = tmp_path / "chat"
    store_file(work).parent.mkdir(parents=True)
    with open(store_file(work), "w", encoding="utf-8") as f:
        for rec in store_lines(src):
            if rec["kind"] != "score":
                f.write(json.dumps(rec) + "\n")
    with serve_standin(labelled, record_bodies=True) as server:
        spec = f"lmdeploy:{server.url}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(SPEC_ENV, spec)
            mp.setenv(OPTIONS_ENV, json.dumps({"prm_options": {"mode": "chat"}}))
            vlmeval_run(work, work / "c.jsonl")
        bodies = list(server.stats.bodies)
    assert server.stats.requests["/generate"] == 0  # chat mode was forced: no probe, no /generate
    candidates = scored(work, spec)
    assert candidates
    scoring = [
        b["messages"]
        for path, b in bodies
        if path == "/v1/chat/completions" and isinstance(b["messages"][1]["content"], list)
    ]
    got = sorted(json.dumps(m, sort_keys=True) for m in scoring)
    want = sorted(
        json.dumps(expected_chat_messages(q, data_url(images[0]), steps, k), sort_keys=True)
        for q, images, steps in candidates
        for k in range(len(steps))
    )
    assert got == want  # every step of every candidate, exactly once

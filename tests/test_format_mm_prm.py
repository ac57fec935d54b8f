"""The ``mm-prm`` format (ModalMinds MM-PRM, InternVL2.5-8B) against its published scoring code:
ModalMinds/MM-PRM b914fd66c8efb3d6667610fba1f8fd1e55cde095, ``internvl/model/internvl_chat/modeling_internvl_chat.py``
(``InternVLChatModel.batch_prm``), ``eval/prm/evaluate_k12_prm.py`` (the prompt) and ``internvl/conversation.py``
(``internvl2_5``, MPT ``get_prompt``).

The released checkpoint (Cierra0506/MM-PRM) cannot be downloaded here: the InternVL + InternLM2 remote-code
stand-in of tests/standins/internlm2_remote.py takes its place, with the tokens MM-PRM's fine-tune adds
(``<prm>``, a special token) and the single pieces ``Yes``/``No`` of InternLM2's vocabulary.
"""

import pytest
import torch
from PIL import Image

from standins.internlm2_remote import IMAGE_SIZE, NUM_IMAGE_TOKEN, write_checkpoint
from vlmeval_prm.prm import scorer_identity
from vlmeval_prm.prm.formats import build_format
from vlmeval_prm.prm.formats.mm_prm import INTERNVL_SYSTEM_MESSAGE
from vlmeval_prm.prm.hf_backend import TransformersPRM

QUESTION = "How many circles are there?"
MM_TOKENS = (("<prm>", True), ("Yes", False), ("No", False))
#: The stand-in's scores (transformers 5.25, repaired; the same on 4.57.6), from the reference below.
GOLDEN = {1: [0.99930716, 0.99997902, 0.99975747], 2: [0.99998140, 0.99975377, 0.99354905]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("mm_prm_standin"), extra_tokens=MM_TOKENS)


@pytest.fixture(scope="module")
def prm(checkpoint):
    return TransformersPRM(checkpoint, format="mm-prm", share_prefix=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    red, wide = folder / "red.png", folder / "wide.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(red)
    img = Image.new("RGB", (1200, 900))
    img.putdata([((x * 7) % 256, (y * 11) % 256, 90) for y in range(900) for x in range(1200)])
    img.save(wide)
    return [str(red), str(wide)]


def test_golden_prompt():
    """get_prompt of internvl2_5 with an empty user turn (its header alone) and the whole prompt in the
    assistant turn; every step followed by <prm>, nothing else between steps."""
    fmt = build_format("mm-prm")
    assert fmt.render("Q?", ["s1", "s2"], 1) == (
        f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n"
        "<image>\nQuestion: Q?\nProcess: s1<prm>s2<prm><|im_end|>\n"
    )
    assert INTERNVL_SYSTEM_MESSAGE.startswith("你是书生·万象，英文名是InternVL")


def reference_scores(prm, images: list[str], solutions: list[list[str]]) -> list[list[float]]:
    """batch_prm, transcribed: tiles by InternVL's dynamic preprocessing (max 6), the internvl2_5 prompt built
    as above, the first <image> (each, in order, for several) expanded to <img> + <IMG_CONTEXT> x tiles x
    num_image_token + </img>, left padding, one forward, softmax over the Yes/No logits at the <prm> positions."""
    from vlmeval.vlm.internvl.utils import load_image

    model, tok = prm.inputs.model, prm.tokenizer
    tiles = [load_image(p, input_size=IMAGE_SIZE, max_num=6) for p in images]
    head = "".join(f"Image-{k + 1}: <image>\n" for k in range(len(images))) if len(images) > 1 else "<image>\n"
    queries = []
    for steps in solutions:
        query = (
            f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n"
            f"{head}Question: {QUESTION}\nProcess: {'<prm>'.join(steps)}<prm><|im_end|>\n"
        )
        for t in tiles:
            query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * NUM_IMAGE_TOKEN * t.shape[0] + "</img>", 1)
        queries.append(query)
    tok.padding_side = "left"
    inputs = tok(queries, return_tensors="pt", padding=True)
    pixel_values = torch.cat([torch.cat(tiles)] * len(solutions))
    prm_id = tok.convert_tokens_to_ids("<prm>")
    yes_no = tok.convert_tokens_to_ids(["Yes", "No"])
    with torch.no_grad():
        logits = model(
            pixel_values=pixel_values,
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            image_flags=torch.ones(pixel_values.shape[0], dtype=torch.long),
            return_dict=True,
        ).logits
    flat = logits[inputs["input_ids"] == prm_id][..., yes_no].softmax(dim=-1)[..., 0].tolist()
    out, start = [], 0
    for steps in solutions:
        out.append(flat[start : start + len(steps)])
        start += len(steps)
    return out


@pytest.mark.parametrize("n_images", [1, 2])
def test_scores_equal_batch_prm(prm, images, n_images):
    solutions = [["There are two circles.", "Two plus one is three.", "Answer: C"], ["I count 3.", "Answer: B"]]
    got = prm.score(QUESTION, images[:n_images], solutions)
    expected = reference_scores(prm, images[:n_images], solutions)
    for res, ref in zip(got, expected):
        assert res.ok, res.error
        assert res.scores == pytest.approx(ref, abs=2e-5)  # left padding (reference) vs right (ours)
    assert got[0].scores == pytest.approx(GOLDEN[n_images], abs=1e-5)
    assert max(got[0].scores) - min(got[0].scores) > 1e-4  # each step read at its own <prm>: a shift shows


def test_the_wide_image_is_tiled_at_most_six_ways(prm, images, checkpoint):
    tiles, counts = prm.inputs.images(images[1:])
    assert counts == [7]  # 3x2 tiles and the thumbnail (InternVL's dynamic_preprocess, max_num=6; 12 would give 4x3)
    spec = f"transformers:{checkpoint}"
    assert scorer_identity(spec, {"format": "mm-prm"})["max_num"] == 6
    assert scorer_identity(spec, {"format": "mm-prm", "max_num": 12})["max_num"] == 12
    assert scorer_identity(spec)["max_num"] == 12  # VisualPRM's, VLMEvalKit's default


def test_a_checkpoint_without_the_prm_token_is_refused(tmp_path):
    plain = write_checkpoint(tmp_path / "plain")
    with pytest.raises(ValueError, match="no '<prm>' token, which the mm-prm format scores at|no tokens 'Yes'"):
        TransformersPRM(plain, format="mm-prm")


@pytest.mark.e2e
def test_best_of_n_with_an_mm_prm_prm_through_vlmeval_run(tmp_path, checkpoint, tiny_paths):
    """``python -m vlmeval.run --config`` (or a checkout's run.py): Best-of-2 of the tiny policy scored by the
    MM-PRM stand-in in the mm-prm format; every candidate's steps are scored."""
    from commands import MiniRows, run_tiny_bon

    rows, spec = MiniRows(3), f"transformers:{checkpoint}"
    store = run_tiny_bon(tmp_path, "MMPRM-BoN2", spec, {"format": "mm-prm"}, rows)
    assert len(store) == rows.rows
    scored = [entry.score(i, spec) for entry in store.values() for i in range(2)]
    assert all(r is not None and r.usable and len(r.step_scores) == len(r.steps) for r in scored)

"""Train the demo's tiny policy and tiny PRM on CPU, seeded, from nothing but the synthetic task.

1. Policy: a small InternVL (transformers-native, the tiny models' tokenizer recipe and processor),
   supervised on demonstrations that often answer without working (a blind guess, as small VLMs do
   when they skip the reasoning) and otherwise work step by step, misreading a cell or miscounting
   some of the time (``task.noisy_solution``), in exactly the prompt Best-of-N sends: VLMEvalKit's
   MCQ prompt plus Best-of-N's step instruction, through the checkpoint's chat template (pinned by a
   test). Sampled at Best-of-N's temperature, it is right about half the time.
2. Monte-Carlo step labels (VisualPRM400K, FACTS section 4): per question the policy samples
   ``mc_solutions`` solutions at Best-of-N's sampling settings; every step prefix gets
   ``mc_rollouts`` continuations and is labelled "+" when any of them reaches the right answer
   (the last step: when the solution itself does). Identical prefixes are rolled out once.
3. PRM: the policy's weights fine-tuned on those labels through the project's own scorer
   (``TransformersPRM``): its renderer builds the VisualPRM conversation, its encoder the inputs,
   its placeholder search the positions; the loss is the cross-entropy of the two-way softmax over
   {"+", "-"} that the scorer reads as P(+).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from vlmeval_prm.constants import DEFAULT_STEP_PROMPT, STEP_SEPARATOR
from vlmeval_prm.demo.task import Problem, is_correct, make_problem, mcq_prompt, noisy_solution, problem_image, solution
from vlmeval_prm.logs import get_logger
from vlmeval_prm.steps import split_steps

log = get_logger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the weights. Train-split indices: policy problems first, then MC problems."""

    seed: int = 0
    vocab_size: int = 600
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 64
    perception_problems: int = 1000
    perception_steps: int = 300
    #: Measured: at 3e-3 (or with the vision tower 5x faster) the image tokens collapse to a constant and
    #: cell reading stays at chance; at 1e-3, 150 perception steps (batch 64) read 72% of held-out cells.
    perception_lr: float = 1e-3
    policy_problems: int = 3000
    policy_steps: int = 700
    policy_batch: int = 32
    policy_lr: float = 1e-3
    guess_rate: float = 0.55
    cell_error: float = 0.02
    count_error: float = 0.1
    mc_problems: int = 300
    mc_solutions: int = 4
    mc_rollouts: int = 8
    prm_epochs: int = 3
    prm_batch_questions: int = 4
    prm_lr: float = 1e-3
    heldout_problems: int = 100
    max_new_tokens: int = 64
    gen_batch: int = 256
    # Best-of-N's own sampling defaults (``SamplingConfig``); top_k=0 is "no top-k", as its HF adapter sends.
    temperature: float = 0.7
    top_p: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def policy_text(problem: Problem) -> str:
    """The user text Best-of-N hands the policy: VLMEvalKit's MCQ prompt, a line break, its step instruction."""
    return f"{mcq_prompt(problem)}\n{DEFAULT_STEP_PROMPT}"


def policy_messages(problem: Problem) -> list[dict]:
    """As ``TransformersChat`` builds them: the image part, then the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": policy_text(problem)}]}]


def tokenizer_corpus(recipe: Recipe) -> list[str]:
    """Texts the BPE merges are learnt from: prompts, solutions and the PRM's conversation wording."""
    from vlmeval_prm.prm.formats.visualprm import PRM_SYSTEM_PROMPT

    rng = random.Random(recipe.seed)
    # a bare blank line too: the tiny tokenizer recipe insists on a "\n\n" token
    texts = [PRM_SYSTEM_PROMPT, DEFAULT_STEP_PROMPT, "### Question:\n", "### Solution Process:\n", "1\n\n2"] * 20
    for i in range(500):
        p = make_problem("train", i)
        texts += [mcq_prompt(p), solution(p), noisy_solution(p, rng, 0.5, 0.5)]
    return texts


def build_untrained(recipe: Recipe):
    """(model, processor): the tiny models' tokenizer recipe and processor, a bigger InternVL, seeded init."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

    from vlmeval_prm.tiny import (
        IMAGE_SEQ_LENGTH,
        IMAGE_SIZE,
        MAX_LENGTH,
        PATCH_SIZE,
        _build_processor,
        _build_tokenizer,
    )

    tokenizer = _build_tokenizer(tokenizer_corpus(recipe), recipe.vocab_size)
    processor = _build_processor(tokenizer)
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=2 * recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = InternVLVisionConfig(
        hidden_size=recipe.vision_hidden_size,
        intermediate_size=2 * recipe.vision_hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        tie_word_embeddings=False,
    )
    torch.manual_seed(recipe.seed)
    model = InternVLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


class Encoded:
    """Prompt token ids (image expanded) and pixel values of problems, encoded once."""

    def __init__(
        self, processor, problems: Sequence[Problem], messages: Callable[[Problem], list[dict]] = policy_messages
    ):
        import torch

        self.problems = list(problems)
        self.prompt_ids: list[list[int]] = []
        pixels = []
        for p in self.problems:
            prompt = processor.apply_chat_template(messages(p), tokenize=False, add_generation_prompt=True)
            enc = processor(text=[prompt], images=[[problem_image(p)]], return_tensors="pt")
            self.prompt_ids.append(enc["input_ids"][0].tolist())
            pixels.append(enc["pixel_values"][0])
        self.pixel_values = torch.stack(pixels)


def _pad(rows: Sequence[Sequence[int]], pad: int, left: bool):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def _optimizer(model, lr: float, steps: int):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(steps - warmup, 1)))
    )
    return opt, sched


#: Stage 1's prompt: reading the grid alone, so the only thing to learn is to look at the image.
DESCRIBE_PROMPT = "Describe the grid row by row."


def _describe_messages(problem: Problem) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE_PROMPT}]}]


def _sft(
    model,
    processor,
    data: Encoded,
    answer: Callable[[Problem], str],
    steps: int,
    lr: float,
    recipe: Recipe,
    seed: int,
    progress: Callable,
    desc: str,
) -> list[float]:
    """Teacher-forced cross-entropy on ``answer(problem)`` + end of turn after each encoded prompt."""
    import torch

    tok = processor.tokenizer
    gen = torch.Generator().manual_seed(seed)
    opt, sched = _optimizer(model, lr, steps)
    model.train()
    losses = []
    for _ in progress(range(steps), desc=desc):
        batch = torch.randint(len(data.problems), (recipe.policy_batch,), generator=gen).tolist()
        rows, starts = [], []
        for i in batch:
            answer_ids = tok(answer(data.problems[i]) + tok.eos_token, add_special_tokens=False)["input_ids"]
            rows.append(data.prompt_ids[i] + answer_ids)
            starts.append(len(data.prompt_ids[i]))
        ids, mask = _pad(rows, tok.pad_token_id, left=False)
        # predict every answer token (and the end of turn) from the position before it
        learn = mask.clone().bool()
        for r, s in enumerate(starts):
            learn[r, :s] = False
        before = torch.roll(learn, -1, dims=1)
        with torch.enable_grad():  # importing vlmeval.vlm switches gradients off process-wide
            hidden = model.model(
                input_ids=ids, attention_mask=mask, pixel_values=data.pixel_values[batch]
            ).last_hidden_state
            logits = model.lm_head(hidden[before])  # the head only where a loss is taken
            loss = torch.nn.functional.cross_entropy(logits, ids[learn])
            opt.zero_grad()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
    model.eval()
    return losses


def train_policy(model, processor, recipe: Recipe, progress: Callable = lambda it, **kw: it) -> list[float]:
    """Stage 1 reads grids (short prompt, exact rows); stage 2 solves problems from noisy demonstrations
    (fresh noise every draw) in Best-of-N's prompt. Returns stage 2's loss curve."""
    problems = [make_problem("train", i) for i in range(recipe.policy_problems)]
    rng = random.Random(recipe.seed + 1)
    if recipe.perception_steps:
        grids = Encoded(processor, problems[: recipe.perception_problems], _describe_messages)
        _sft(
            model,
            processor,
            grids,
            lambda p: STEP_SEPARATOR.join(solution(p).split(STEP_SEPARATOR)[:2]),
            recipe.perception_steps,
            recipe.perception_lr,
            recipe,
            recipe.seed + 5,
            progress,
            "perception",
        )
    data = Encoded(processor, problems)
    return _sft(
        model,
        processor,
        data,
        lambda p: noisy_solution(p, rng, recipe.cell_error, recipe.count_error, recipe.guess_rate),
        recipe.policy_steps,
        recipe.policy_lr,
        recipe,
        recipe.seed + 1,
        progress,
        "policy",
    )


def sample(
    model,
    processor,
    data: Encoded,
    jobs: Sequence[tuple[int, str]],
    recipe: Recipe,
    seed: int,
    progress: Callable = lambda it, **kw: it,
) -> list[str]:
    """One sampled continuation per (problem position in ``data``, text already written) job."""
    import torch

    tok = processor.tokenizer
    out: list[str] = []
    for start in progress(range(0, len(jobs), recipe.gen_batch), desc="sampling"):
        chunk = jobs[start : start + recipe.gen_batch]
        rows = [
            data.prompt_ids[i] + (tok(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
            for i, prefix in chunk
        ]
        ids, mask = _pad(rows, tok.pad_token_id, left=True)
        torch.manual_seed(seed + start)
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=data.pixel_values[[i for i, _ in chunk]],
                do_sample=True,
                temperature=recipe.temperature,
                top_p=recipe.top_p,
                top_k=0,
                max_new_tokens=recipe.max_new_tokens,
            )
        out += tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
    return out


@dataclass
class Labelled:
    """One sampled solution, its steps and their Monte-Carlo labels (1 "+", -1 "-") and rates."""

    problem: Problem
    steps: list[str]
    labels: list[int]
    mc: list[float]
    correct: bool


def mc_label(
    model, processor, problems: Sequence[Problem], recipe: Recipe, seed: int, progress: Callable = lambda it, **kw: it
) -> list[Labelled]:
    """Sample solutions, then label every step by ``mc_rollouts`` continuations of its prefix."""
    data = Encoded(processor, problems)
    jobs = [(i, "") for i in range(len(problems)) for _ in range(recipe.mc_solutions)]
    texts = sample(model, processor, data, jobs, recipe, seed, progress)
    solutions = [(i, split_steps(t), t) for (i, _), t in zip(jobs, texts)]
    prefixes = sorted(
        {
            (i, STEP_SEPARATOR.join(steps[:k]) + STEP_SEPARATOR)
            for i, steps, _ in solutions
            for k in range(1, len(steps))
        }
    )
    rollouts = [job for job in prefixes for _ in range(recipe.mc_rollouts)]
    conts = sample(model, processor, data, rollouts, recipe, seed + 10**6, progress)
    hits: dict[tuple[int, str], int] = {}
    for (i, prefix), cont in zip(rollouts, conts):
        hits[(i, prefix)] = hits.get((i, prefix), 0) + is_correct(problems[i], prefix + cont)
    out = []
    for i, steps, text in solutions:
        if not steps:
            continue
        correct = is_correct(problems[i], text)
        mc = [
            hits[(i, STEP_SEPARATOR.join(steps[:k]) + STEP_SEPARATOR)] / recipe.mc_rollouts
            for k in range(1, len(steps))
        ] + [float(correct)]
        out.append(Labelled(problems[i], steps, [1 if m > 0 else -1 for m in mc], mc, correct))
    return out


def train_prm(init_path: str, labelled: Sequence[Labelled], recipe: Recipe, progress: Callable = lambda it, **kw: it):
    """Fine-tune the checkpoint at ``init_path`` into a PRM; returns (the scorer, its loss curve)."""
    import torch

    from vlmeval_prm.prm.hf_backend import TransformersPRM

    prm = TransformersPRM(init_path)
    model, pad = prm.model, prm.tokenizer.pad_token_id
    by_problem: dict[int, list[Labelled]] = {}
    for item in labelled:
        by_problem.setdefault(item.problem.index, []).append(item)
    groups = list(by_problem.values())
    rng = random.Random(recipe.seed + 2)
    steps = recipe.prm_epochs * -(-len(groups) // recipe.prm_batch_questions)
    opt, sched = _optimizer(model, recipe.prm_lr, steps)
    model.train()
    losses = []
    pbar = progress(range(steps), desc="prm")
    it = iter(pbar)
    for _ in range(recipe.prm_epochs):
        rng.shuffle(groups)
        for g in range(0, len(groups), recipe.prm_batch_questions):
            next(it, None)
            rows, pixels, targets, positions = [], [], [], []
            for group in groups[g : g + recipe.prm_batch_questions]:
                p = group[0].problem
                enc = prm.inputs.encode([prm.render(mcq_prompt(p), x.steps, 1) for x in group], [problem_image(p)])
                for r, x in enumerate(group):
                    ids = enc["input_ids"][r][enc["attention_mask"][r].bool()].tolist()
                    pos = prm.placeholder_positions(ids)
                    if len(pos) != len(x.steps):
                        raise RuntimeError(f"{len(pos)} placeholders for {len(x.steps)} steps")
                    rows.append(ids)
                    positions.append([q - 1 for q in pos])  # the logits that predict each "+"
                    targets.append([0 if lab > 0 else 1 for lab in x.labels])  # index into (+, -)
                pixels.append(enc["pixel_values"])
            ids, mask = _pad(rows, pad, left=False)
            with torch.enable_grad():  # importing vlmeval.vlm switches gradients off process-wide
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=torch.cat(pixels)).logits
                pair = torch.cat([logits[r, pos][:, [prm.good_id, prm.bad_id]] for r, pos in enumerate(positions)])
                loss = torch.nn.functional.cross_entropy(pair, torch.tensor([t for ts in targets for t in ts]))
                opt.zero_grad()
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss))
    model.eval()
    return prm, losses


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = round(time.perf_counter() - self.t0, 1)
                log.info("%s took %.1f s", name, timer.times[name])

        return _Span()

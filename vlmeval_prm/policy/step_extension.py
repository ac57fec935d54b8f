"""Step extension: a policy continuing a partial answer by one step, what PRM-guided search needs.

In process (``TransformersChat``), the prompt is the model's chat template with the generation prompt,
followed by the partial answer as raw text; the model samples ``k`` continuations in one ``generate`` call,
each stopped at the step delimiter (a blank line) or at the end of the answer. Served (VLMEvalKit's ``GPT4V``
pointed at a vLLM OpenAI-compatible server), the partial answer is the final assistant message of a chat
request that the server continues (vLLM's ``continue_final_message``, ``add_generation_prompt`` false), ``n``
continuations stopped at the delimiter (kept, ``include_stop_str_in_output``); the server's ``usage`` counts
the tokens (a request's totals, booked on its first continuation). A continuation that ends without the
delimiter finished the answer (one cut by the token limit did not). Other families cannot continue a prefix
and are refused by name, with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from vlmeval_prm.constants import STEP_SEPARATOR
from vlmeval_prm.policy.base import UnsupportedPolicyError
from vlmeval_prm.search.base import Extension

#: Classes whose generation this module drives (``TransformersChat`` and its subclasses).
EXTENDABLE = ("TransformersChat",)


def prefix_seed(question: str, prefix: Sequence[str]) -> int:
    """The sampling seed of one expansion: a killed search resumed draws what it would have drawn."""
    blob = "\x1e".join([question, *prefix]).encode("utf-8", "surrogatepass")
    return int(hashlib.sha256(blob).hexdigest()[:8], 16)


class TransformersStepPolicy:
    """``TransformersChat`` continuing from a prefix (``temperature``/``top_p`` sampling, at most
    ``max_step_tokens`` per step, stopped at ``STEP_SEPARATOR``)."""

    def __init__(self, chat, temperature: float = 0.7, top_p: float = 0.95, max_step_tokens: int = 128):
        self.chat, self.temperature, self.top_p, self.max_step_tokens = chat, temperature, top_p, max_step_tokens

    def extend(
        self, question: str, images: Sequence[str], prefixes: Sequence[Sequence[str]], k: int
    ) -> list[list[Extension]]:
        import torch

        from vlmeval_prm.counters import bump
        from vlmeval_prm.loading import load_images

        chat = self.chat
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if chat.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": chat.system_prompt}]})
        head = chat.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        loaded = load_images(list(images)) if images else None
        out = []
        for prefix in prefixes:
            kwargs = {"text": [head + "".join(prefix)], "return_tensors": "pt"}
            if loaded:
                kwargs["images"] = [loaded]
            inputs = chat.processor(**kwargs).to(chat.model.device)
            torch.manual_seed(prefix_seed(question, prefix))
            with torch.inference_mode():
                ids = chat.model.generate(
                    **inputs,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    max_new_tokens=self.max_step_tokens,
                    num_return_sequences=k,
                    stop_strings=[STEP_SEPARATOR],
                    tokenizer=chat.tokenizer,
                )
            bump("policy_generate_calls")
            bump("policy_sequences", k)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            exts = []
            for row in ids[:, prompt_tokens:]:
                text, tokens = self._step(row)
                # the answer ended only where the model stopped by itself: not at the delimiter, not at the limit
                finished = STEP_SEPARATOR not in text and tokens < self.max_step_tokens
                exts.append(Extension(text, finished=finished, tokens=tokens, prompt_tokens=prompt_tokens))
            out.append(exts)
        return out

    def _step(self, row) -> tuple[str, int]:
        """The step's text up to and including the first delimiter, and the tokens generated for it."""
        tokenizer = self.chat.tokenizer
        pad = tokenizer.pad_token_id
        ids = [t for t in row.tolist() if t != pad]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = text.find(STEP_SEPARATOR)
        return (text if cut < 0 else text[: cut + len(STEP_SEPARATOR)]), len(ids)


class ServedStepPolicy:
    """A served policy (``GPT4V``'s ``api_base``, ``model`` and key) continued by a vLLM server."""

    def __init__(self, api, temperature: float = 0.7, top_p: float = 0.95, max_step_tokens: int = 128):
        self.url, self.model, self.key = api.api_base, api.model, getattr(api, "key", None)
        self.temperature, self.top_p, self.max_step_tokens = temperature, top_p, max_step_tokens
        self.timeout = float(getattr(api, "timeout", 60) or 60)

    def extend(
        self, question: str, images: Sequence[str], prefixes: Sequence[Sequence[str]], k: int
    ) -> list[list[Extension]]:
        import httpx
        from vlmeval.smp import encode_image_file_to_base64

        parts = [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{encode_image_file_to_base64(p)}"}}
            for p in images
        ]
        user = {"role": "user", "content": [*parts, {"type": "text", "text": question}]}
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        out = []
        with httpx.Client(timeout=self.timeout, headers=headers) as client:
            for prefix in prefixes:
                body = {
                    "model": self.model,
                    "messages": [user, {"role": "assistant", "content": "".join(prefix)}],
                    "n": k,
                    "temperature": self.temperature,
                    "top_p": self.top_p,
                    "max_tokens": self.max_step_tokens,
                    "stop": [STEP_SEPARATOR],
                    "include_stop_str_in_output": True,
                    "continue_final_message": True,
                    "add_generation_prompt": False,
                    "seed": prefix_seed(question, prefix),
                }
                reply = client.post(self.url, json=body)
                if reply.status_code != 200:
                    raise RuntimeError(f"{self.url} answered HTTP {reply.status_code}: {reply.text[:300]}")
                data = reply.json()
                usage = data.get("usage") or {}
                exts = []
                for j, choice in enumerate(sorted(data["choices"], key=lambda c: c.get("index", 0))):
                    text = choice["message"]["content"] or ""
                    finished = not text.endswith(STEP_SEPARATOR) and choice.get("finish_reason") != "length"
                    first = j == 0  # the request's token counts, booked once
                    tokens = int(usage.get("completion_tokens", 0)) if first else 0
                    prompt_tokens = int(usage.get("prompt_tokens", 0)) if first else 0
                    exts.append(Extension(text, finished, tokens=tokens, prompt_tokens=prompt_tokens))
                if len(exts) != k:
                    raise RuntimeError(f"{self.url} returned {len(exts)} continuations for n={k}")
                out.append(exts)
        return out


#: Served classes whose requests this module writes (a vLLM server behind VLMEvalKit's OpenAI wrapper).
SERVED = ("GPT4V",)


def refusal(cls: type) -> str | None:
    """Why a VLMEvalKit class cannot be searched with (None: it can)."""
    if any(klass.__name__ in (*EXTENDABLE, *SERVED) for klass in cls.__mro__):
        return None
    return (
        f"{cls.__name__} cannot continue a partial answer: search needs generation from a prefix, which the "
        f"plugin drives for {', '.join(EXTENDABLE)} (in process) and {', '.join(SERVED)} on a vLLM server; use "
        "Best-of-N (-BoN<N>) for it"
    )


def step_policy_for(model, temperature: float, top_p: float, max_step_tokens: int):
    """The step policy of a VLMEvalKit model; ``UnsupportedPolicyError`` naming the class and why otherwise."""
    why = refusal(type(model))
    if why:
        raise UnsupportedPolicyError(why)
    if any(klass.__name__ in SERVED for klass in type(model).__mro__):
        return ServedStepPolicy(model, temperature, top_p, max_step_tokens)
    return TransformersStepPolicy(model, temperature, top_p, max_step_tokens)

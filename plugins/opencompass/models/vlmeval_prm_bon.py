# OpenCompass model config: a Best-of-N model served by `vlmeval-prm serve`, called through OpenCompass's
# OpenAISDK (OpenAI-compatible chat completions). The server answers with the best of its N candidates.
#
# Environment, read when the config loads:
#   VLMEVAL_PRM_SERVE_URL    the server's base URL (default http://127.0.0.1:8000/v1)
#   VLMEVAL_PRM_SERVE_MODEL  the served model name (default VLMEvalPRM-TinyPolicy-BoN4, the `--demo` model)
#   VLMEVAL_PRM_TOKENIZER    tokenizer OpenCompass counts prompt tokens with (default gpt-4's tiktoken
#                            encoding, which tiktoken downloads once; offline, a local tokenizer folder)
#   OPENAI_API_KEY           the server's --api-key, if it has one. OpenAISDK reads it at run time, so it
#                            never lands in the config OpenCompass writes to its output folder.
import os

from opencompass.models import OpenAISDK

served_model = os.environ.get("VLMEVAL_PRM_SERVE_MODEL", "VLMEvalPRM-TinyPolicy-BoN4")

models = [
    dict(
        abbr=served_model,
        type=OpenAISDK,
        path=served_model,
        openai_api_base=os.environ.get("VLMEVAL_PRM_SERVE_URL", "http://127.0.0.1:8000/v1"),
        key="ENV" if os.environ.get("OPENAI_API_KEY") else "EMPTY",
        tokenizer_path=os.environ.get("VLMEVAL_PRM_TOKENIZER", "gpt-4"),
        # The server bounds its own concurrency (vlmeval-prm serve --max-concurrency) and queues the rest.
        query_per_second=64,
        batch_size=8,
        retry=2,
        max_seq_len=32768,
        # Sent as max_tokens; the server samples with the settings it was started with.
        max_out_len=4096,
        run_cfg=dict(num_gpus=0),
    )
]

"""Values shared by several stages, defined once."""

#: VisualPRM scores at most this many steps; longer responses are merged evenly (paper, evaluation).
MAX_STEPS = 12
#: Steps are separated by a blank line (VisualPRM's ``response.split("\n\n")``).
STEP_SEPARATOR = "\n\n"
#: What Best-of-N appends to the question so that the policy answers in steps (the demo policy is trained on it).
DEFAULT_STEP_PROMPT = (
    "Solve the problem step by step. Put a blank line between steps, and state the final answer in the last step."
)
#: Where ``lmdeploy serve api_server`` listens by default: the PRM registered names use.
DEFAULT_PRM_SPEC = "lmdeploy:http://127.0.0.1:23333"

# Environment variables read by the plugin (the README's Options table). The startup hook's own
# switch, VLMEVAL_PLUGINS_DISABLE, lives in plugins/vlmeval_prm_hook.py: that module imports nothing.
SPEC_ENV = "VLMEVAL_PRM_SPEC"
OPTIONS_ENV = "VLMEVAL_PRM_OPTIONS"
STORE_DIR_ENV = "VLMEVAL_PRM_STORE_DIR"
#: ``1`` registers the demo's models, trained and tiny (``vlmeval-prm demo`` sets it for its run).
DEMO_ENV = "VLMEVAL_PRM_DEMO"
#: Where the demo's models are cached (``<it>/tiny``, ``<it>/demo``; default ``~/.cache/vlmeval_prm``).
HOME_ENV = "VLMEVAL_PRM_HOME"
#: A file that collects work counters across processes (benchmarks and tests; not for users).
COUNTERS_ENV = "VLMEVAL_PRM_COUNTERS"

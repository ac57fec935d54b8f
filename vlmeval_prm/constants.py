"""Values shared by several stages, defined once."""

#: VisualPRM scores at most this many steps; longer responses are merged evenly (paper, evaluation).
MAX_STEPS = 12
#: Steps are separated by a blank line (VisualPRM's ``response.split("\n\n")``).
STEP_SEPARATOR = "\n\n"
#: Where ``lmdeploy serve api_server`` listens by default: the PRM registered names use.
DEFAULT_PRM_SPEC = "lmdeploy:http://127.0.0.1:23333"

#: Environment variables read by the plugin (documented in the README).
SPEC_ENV = "VLMEVAL_PRM_SPEC"
OPTIONS_ENV = "VLMEVAL_PRM_OPTIONS"
STORE_DIR_ENV = "VLMEVAL_PRM_STORE_DIR"
DEMO_ENV = "VLMEVAL_PRM_DEMO"

"""Best-of-N with process reward models for VLMEvalKit.

Importing this package is cheap: heavy pieces (torch, transformers, vlmeval) load in the
submodules that need them.
"""

__version__ = "0.1.0"

"""VLMEvalKit glue: registration (plugin), the Best-of-N and PRM-judge model classes, the run
context, and the ``vlmeval-prm`` CLI."""

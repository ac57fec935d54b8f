"""Test and benchmark helpers that need optional packages (LMDeploy's server code, uvicorn).

Nothing here is imported by the plugin at run time.
"""

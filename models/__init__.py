"""sdcpu.models: the registry of supported families with their defaults, their configs, and the bundled shapes model."""

if __name__ != "sdcpu.models":
    raise ImportError("this folder installs as sdcpu.models: import sdcpu.models (pip install -e . in the checkout)")

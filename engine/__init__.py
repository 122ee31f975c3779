"""sdcpu.engine: the generation core (prompt -> conditioning -> seeded noise -> sampler loop -> VAE -> PNG); never imports torch, the CLI or the exporter."""

if __name__ != "sdcpu.engine":
    raise ImportError("this folder installs as sdcpu.engine: import sdcpu.engine (pip install -e . in the checkout)")

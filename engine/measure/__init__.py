"""sdcpu.engine.measure: what `sdcpu bench` and bench/ measure: step latency, FLOPs, shapes-model quality, reports."""

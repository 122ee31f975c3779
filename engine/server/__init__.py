"""sdcpu.engine.server: `sdcpu serve`, Automatic1111's web API and a browser page over one FIFO queue (FastAPI)."""

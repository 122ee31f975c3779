"""sdcpu.engine.cli: the `sdcpu` command (Typer app in app.py, one module per command); the only code that prints."""

"""`python -m sdcpu` is the `sdcpu` command."""

from sdcpu.engine.cli.app import main

main()

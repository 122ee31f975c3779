"""sdcpu.engine.batch: `sdcpu batch`, jobs x seeds into a folder with a ledger, on local processes or Ray actors."""

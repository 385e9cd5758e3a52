"""The `sdcpu` command line: thin typer commands over `sdcpu.export.convert` and `sdcpu.Pipeline`."""

from sdcpu.cli.main import main

main()

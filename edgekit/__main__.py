from edgekit.cli.main import main

main()

from ddpp_cli.cli import main

main()

from onebox.cli.main import main

main()

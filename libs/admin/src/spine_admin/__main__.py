from spine_admin.cli import main

main()

from fashion_lake.cli import main

main()

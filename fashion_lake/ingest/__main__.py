from fashion_lake.ingest.write import main

main()

"""Writing Deep Lake datasets: Fashion-MNIST IDX files, image folders, Deep Lake 3 conversions.

``python -m fashion_lake.ingest`` (or ``fashion-lake-ingest``). Nothing here imports torch: its
worker processes start in a fraction of a second and hold no CUDA or torch memory.
"""

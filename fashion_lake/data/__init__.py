"""The data path: Deep Lake datasets streamed to Lightning as batches.

One concept per module, dependencies pointing down the list: ``module`` (the Lightning data
module, a thin adapter over the rest), ``loader`` (a rank's batches from its workers' parts),
``reader`` (the rows a process reads), ``order`` (which rows, in which order: partitions,
shuffle, positions), ``units`` (read units: storage chunks), ``info`` (checks made once, up
front), ``handoff`` (shared memory between processes: batch slots, the epoch cursor),
``decode`` / ``crops`` (images on the host or the device), ``augment`` (whole-batch
augmentation), ``files`` (image files read in place). The data path never imports the
application (``fashion_lake.cli``, ``model``, ...).
"""

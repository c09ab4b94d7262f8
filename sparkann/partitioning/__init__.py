"""Coarse partitioning: centroids, the rule that ranks them, shards, and routing.

Pure numpy, scikit-learn and hnswlib; Spark only moves the data (see
:mod:`sparkann.build`).
"""

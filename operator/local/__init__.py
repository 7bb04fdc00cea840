"""diffar.operator.local: runs on one machine with no cluster.

`diffar run RUN.yaml --local` (runner), `diffar quickstart` and `make reproduce`: the same
manifests and spec -> TrainConfig mapping as the operator, launched with torchx on this host.
"""

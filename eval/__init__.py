"""Detection quality on real labelled data (NAB, SKAB): `python -m eval` (docs/detection.md)."""

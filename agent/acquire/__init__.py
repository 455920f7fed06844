"""Acquisition: a device's driver, chosen by its protocol, and the task that runs it.

The task connects, polls each plan on the monotonic clock, hands every batch to the
device's detector chain and reports each change of health; it reconnects with backoff.
"""

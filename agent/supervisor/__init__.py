"""The supervisor: starts the store, the uplink, every device and the servers, restarts a
failed device task, applies a reload, and stops everything in one written order.
"""

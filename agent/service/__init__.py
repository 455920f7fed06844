"""What runs beside the pipeline for the people and systems around it: the status and
control sockets, Prometheus metrics, systemd notification, logging, relearning.
"""

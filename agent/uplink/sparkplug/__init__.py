"""`mqtt.format: sparkplug`: the gateway as a Sparkplug B 3.0 Edge Node (docs/sparkplug.md).

`topics` names, `codec` encodes (the committed `sparkplug_b_pb2` does the protobuf), `mapping`
turns events into metrics, `session` keeps births, aliases and `seq`, `bdseq` the number
that survives restarts, `uplink` puts it all on the agent's MQTT client.
"""

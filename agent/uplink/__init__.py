"""The uplink: events from the store to the MQTT broker, at QoS 1, TLS by default.

`client` owns the paho connection and the send loop; `link` names why the link is down;
`send_order` decides live-first after an outage; `presence` is the retained birth/will
message on the `status` topic; `credentials` reads the broker password; `sparkplug` is the
same uplink as a Sparkplug B Edge Node (`mqtt.format: sparkplug`).
"""

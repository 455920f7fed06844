"""The uplink: events from the store to the MQTT broker, at QoS 1, TLS by default.

`client` runs the send loop over `connection` (one MQTT connection on the event loop,
`packets` its bytes); `read_ahead` keeps the backlog's next rows at hand; `link` names why
the link is down; `send_order` decides live-first after an outage; `presence` is the
retained birth/will message on the `status` topic; `credentials` reads the broker
password; `sparkplug` is the same uplink as a Sparkplug B Edge Node (`mqtt.format:
sparkplug`).
"""

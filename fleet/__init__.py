"""The fleet side: events from every gateway into PostgreSQL, exactly once, with the proof.

`edge-fleet ingest` takes the agents' events from the broker (a shared subscription, a
persistent session, an acknowledgement only once a row is committed) into PostgreSQL;
`edge-fleet completeness` says per gateway which sequence numbers arrived, which are
missing and which of those the agent itself accounted for; `edge-fleet config push` and
`edge-fleet command` send gateways signed configurations and commands. It uses the agent's
event codec (`agent.events`), its configuration loader and its message signing
(`agent.config.signed`), and nothing of the agent's runtime.
"""

"""Live side of the API: one MQTT link to the broker, fanned out to stream clients.

``events`` turns broker messages into stream events, ``hub`` delivers them to subscribers through
bounded queues, ``broker`` owns the paho client, and ``acks`` records command acknowledgements.
"""

"""Operator control: the command table, the local unix socket, and (later) MQTT for fleets."""

"""Operator control: the command table, the interface to the daemon, the local socket and MQTT for fleets."""

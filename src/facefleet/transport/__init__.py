"""Event sinks (JSONL, MQTT, Greengrass IPC) and the durable spool in front of them."""
